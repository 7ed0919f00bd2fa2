"""Fixtures of verification's tests: real simulated agents on loopback, a real Celery worker.

The worker is a ``celery -A interconnect worker --pool=prefork`` subprocess against the Redis
database of ``CELERY_BROKER_URL`` and the *test* PostgreSQL database, so tests that use it are
``django_db(transaction=True)``: the worker must see committed rows. A transactional test
truncates every table when it ends; ``reseed_topology`` puts the national topology back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from agent.server import AgentRuntime, build_server
from registry.models import Accelerator, Pool
from tests.factories import CenterFactory, PoolFactory
from verification.choices import FINISHED_STATES
from verification.models import VerificationRun

ROOT = Path(__file__).resolve().parents[2]

# The verifier and the simulated agents share one time scale (docs/agent.md, "Timing model").
# At 1e-7 an A100 (312 TFLOPS) is emulated at ~31 MFLOPS per device: a chain of 128 x 128
# products (4.2 MFLOP each) sized for 1.5 s has 12 steps of ~135 ms, far above numpy's real
# cost (~1-3 ms a product on a busy 2-core machine), so honest agents keep up with all 8 devices
# of the sampled node at once.
TIME_SCALE = 1e-7
MATRIX_SIZE = 128
TARGET_SECONDS = 1.5
A100_TFLOPS = 312.0
WORKER_SETTINGS = {
    "VERIFICATION_TIME_SCALE": str(TIME_SCALE),
    "VERIFICATION_MATRIX_SIZE": str(MATRIX_SIZE),
    "VERIFICATION_TARGET_SECONDS": str(TARGET_SECONDS),
    "VERIFICATION_SAMPLE_NODES": "1",
    "VERIFICATION_ACCEPT_SIMULATED": "True",
    "VERIFICATION_FREIVALDS_ROUNDS": "8",
    "VERIFICATION_MAX_RETRIES": "4",
    "VERIFICATION_TASK_TIME_LIMIT": "30",
    "VERIFICATION_RPC_TIMEOUT": "10",
}


@pytest.fixture(autouse=True)
def verifier_settings(settings: Any) -> None:
    """The same verifier settings in this process (direct service calls) as in the worker."""
    for name, value in WORKER_SETTINGS.items():
        current = getattr(settings, name)
        typed = value == "True" if isinstance(current, bool) else type(current)(value)
        setattr(settings, name, typed)


@pytest.fixture(autouse=True)
def reseed_topology(request: pytest.FixtureRequest, django_db_blocker: Any) -> None:
    """Load the topology again if a transactional test (which truncates all tables) wiped it."""
    if request.node.get_closest_marker("django_db") is None:
        return
    with django_db_blocker.unblock():
        if not Accelerator.objects.exists():
            call_command("seed_national_topology", verbosity=0)


# --- agents ------------------------------------------------------------------------------------


def agent_config(
    mode: SimulationMode = SimulationMode.HONEST,
    *,
    model: str = "nvidia-a100-80g",
    declared_tflops: float = A100_TFLOPS,
    accelerators_per_node: int = 8,
    nodes: int = 4,
    flaky_failures: int = 2,
    speed_factor: float | None = None,
) -> AgentConfig:
    """A simulated center fronting one pool, on an ephemeral loopback port."""
    return AgentConfig(
        agent_id=f"test-{mode}",
        port=0,
        pools=(
            PoolConfig(
                key=model,
                accelerator_model=model,
                accelerators_per_node=accelerators_per_node,
                nodes=nodes,
                declared_tflops_per_accelerator=declared_tflops,
            ),
        ),
        simulation=SimulationConfig(
            mode=mode,
            time_scale=TIME_SCALE,
            flaky_failures=flaky_failures,
            speed_factor=speed_factor,
        ),
        workload_startup_seconds=0.0,
        grace_seconds=0.0,
    )


StartAgent = Callable[[AgentConfig], str]


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """Start real agent servers in this process; each call returns its ``host:port``."""
    runtimes: list[AgentRuntime] = []

    def start(config: AgentConfig) -> str:
        runtime = build_server("127.0.0.1:0", agent_config=config)
        runtimes.append(runtime)
        return f"127.0.0.1:{runtime.port}"

    yield start
    for runtime in runtimes:
        runtime.stop(grace=0).wait()


class AgentProcesses:
    """``python -m agent`` processes started by a test; calling it starts one and returns the
    ``host:port`` it printed (``processes[-1]`` is its process)."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def __call__(self, *argv: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "--port", "0", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (\S+)", line)
        assert found, f"agent did not start: {line!r}"
        return found.group(1)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a cheater still computing what it committed to
                process.kill()
                process.wait()


@pytest.fixture
def agent_process() -> Iterator[AgentProcesses]:
    """Start ``python -m agent`` processes (stopped, by their own pids, when the test ends)."""
    processes = AgentProcesses()
    yield processes
    processes.stop()


@pytest.fixture
def pool_at() -> Callable[..., Pool]:
    """A draft A100 pool (8 x 4, 312 TFLOPS declared) of ``operator`` whose agent is at
    ``endpoint``."""

    def make(operator: Any, endpoint: str, **pool_fields: Any) -> Pool:
        center = CenterFactory(operator=operator, agent_endpoint=endpoint)
        fields = {
            "accelerator": Accelerator.objects.get(slug="nvidia-a100-80g"),
            "accelerators_per_node": 8,
            "nodes": 4,
            "declared_tflops_per_accelerator": A100_TFLOPS,
            **pool_fields,
        }
        return PoolFactory(center=center, **fields)

    return make


def wait_finished(run: VerificationRun, timeout: float = 60.0) -> VerificationRun:
    """Poll the database until the run is finished (the worker commits its verdict)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.state in FINISHED_STATES:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run.run_id} still {run.state} after {timeout} s")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# --- Celery workers ------------------------------------------------------------------------------


class Worker:
    """A ``celery worker`` subprocess started by a test (killed only by its own pid)."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "interconnect",
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                "--hostname",
                f"verif-test-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, timeout=60, what=f"celery worker ready (log {log})")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"celery worker exited:\n{self.output()[-3000:]}")
        return " ready." in self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def worker_env(**overrides: str) -> dict[str, str]:
    """The worker's environment: the test database, the test broker, the verifier settings."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        **WORKER_SETTINGS,
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """One prefork worker (2 children) for the session, on the suite's Redis database."""
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("the worker tests need CELERY_BROKER_URL=redis://...")
    import redis

    # Messages left by an earlier, interrupted run would name runs that no longer exist.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    with django_db_blocker.unblock():
        env = worker_env()
    log = tmp_path_factory.mktemp("celery-worker") / "worker.log"
    worker = Worker(env, log, concurrency=2)
    yield worker
    worker.stop()


@pytest.fixture
def filesystem_worker(
    django_db_setup: Any, tmp_path: Path
) -> Iterator[tuple[Worker, dict[str, Any]]]:
    """A worker on the embedded file-system transport (``make run``'s default), with the
    transport options a producer needs to reach it."""
    var_dir = tmp_path / "var"
    queue = var_dir / "celery-queue"
    (queue / "processed").mkdir(parents=True)
    env = worker_env(CELERY_BROKER_URL="filesystem://", INTERCONNECT_VAR_DIR=str(var_dir))
    worker = Worker(env, tmp_path / "worker.log", concurrency=1)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(queue / "processed"),
        "store_processed": False,
    }
    yield worker, options
    worker.stop()
