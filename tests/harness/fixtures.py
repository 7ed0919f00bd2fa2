"""pytest fixtures of the harness; a test folder opts in by importing them in its conftest.

- ``private_pg`` (session): a private PostgreSQL 15 cluster with a migrated, seeded template.
- ``procs``: the processes this test starts; all stopped at teardown, by process group.
- ``make_platform``: a fresh database cloned from the template, plus a private var dir.
- ``make_redis``: a private redis-server (``appendonly`` yes/no).
- ``figure``: the test's FIGURE line, printed even when the test fails.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.figures import ARTIFACTS, Figure
from tests.harness.platform import Platform, prepare_template
from tests.harness.postgres import PrivatePostgres
from tests.harness.procs import ProcessGroup
from tests.harness.redis import PrivateRedis

TEMPLATE_DB = "platform_template"


@pytest.fixture(scope="session")
def private_pg() -> Iterator[tuple[PrivatePostgres, Path]]:
    """The private cluster and the var dir holding the template's demo tokens."""
    pg = PrivatePostgres().init()
    pg.start()
    var_dir = Path(tempfile.mkdtemp(prefix="ci-faults-var-"))
    try:
        prepare_template(pg, name=TEMPLATE_DB, var_dir=var_dir)
        yield pg, var_dir
    finally:
        pg.destroy()
        shutil.rmtree(var_dir, ignore_errors=True)


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::")[-1])[:100]


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/logs/<test>/``: every process's output, kept for the post-mortem."""
    path = ARTIFACTS / "logs" / _slug(request.node.nodeid)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def procs(log_dir: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir)
    yield group
    group.stop_all()


@pytest.fixture
def make_platform(
    private_pg: tuple[PrivatePostgres, Path],
    procs: ProcessGroup,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Callable[..., Platform]:
    pg, template_var = private_pg

    def make(*, broker_url: str = "memory://") -> Platform:
        # Readable, and unique per test id (parametrized variants differ only at the end).
        digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
        dbname = "t_" + re.sub(r"[^a-z0-9]+", "_", _slug(request.node.nodeid).lower())[:40]
        dbname += "_" + digest
        # Restarts earlier in the session may leave the template busy for a moment.
        pg.clone(TEMPLATE_DB, dbname)
        var_dir = tmp_path / "var"
        var_dir.mkdir(exist_ok=True)
        shutil.copy(template_var / "demo-tokens.json", var_dir / "demo-tokens.json")
        return Platform(pg=pg, dbname=dbname, procs=procs, var_dir=var_dir, broker_url=broker_url)

    return make


@pytest.fixture
def make_redis(procs: ProcessGroup, tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    started: list[PrivateRedis] = []

    def make(*, appendonly: bool) -> PrivateRedis:
        redis = PrivateRedis(procs, appendonly=appendonly, base_dir=tmp_path)
        redis.start()
        started.append(redis)
        return redis

    yield make
    for redis in started:
        redis.destroy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[Any]:
    """Remember each phase's report on the item, so ``figure`` can say whether the test passed."""
    report = yield
    setattr(item, f"_rep_{report.when}", report)
    return report


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Iterator[Callable[..., Figure]]:
    """``figure("X3.pg_restart_fast", attempted=0)``: filled by the test, printed at the end."""
    made: list[Figure] = []

    def make(test: str, **fields: Any) -> Figure:
        fig = Figure(test, **fields)
        made.append(fig)
        return fig

    yield make
    rep = getattr(request.node, "_rep_call", None)
    for fig in made:
        fig.emit(passed=bool(rep and rep.passed))
