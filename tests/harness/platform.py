"""The platform's own processes (web, workers, brokers) against a private database and broker.

A ``Platform`` is one database on the private cluster (cloned from a migrated and seeded
template), an optional private Redis, a private ``var/`` directory (demo tokens, logs) and the
processes started against them, exactly as ``make up`` would start them, configured through the
environment only (``DATABASE_URL``, ``CELERY_BROKER_URL``, ``INTERCONNECT_VAR_DIR``).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.postgres import PrivatePostgres
from tests.harness.procs import (
    PYTHON,
    ROOT,
    VENV_BIN,
    ManagedProcess,
    ProcessGroup,
    free_port,
    wait_until,
)

# Variables of the caller (pytest's own DATABASE_URL, broker...) that must not leak into the
# processes under test: they get only what the Platform says.
_SCRUBBED = ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "INTERCONNECT_VAR_DIR")


def base_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="interconnect.settings",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        DJANGO_DEBUG="0",  # production-shaped answers: no technical 500 pages
        LOG_LEVEL="WARNING",
    )
    env.update(values)
    return env


def prepare_template(pg: PrivatePostgres, *, name: str, var_dir: Path) -> None:
    """Create, migrate and seed (topology, catalog, demo tenants and tokens) database ``name``."""
    pg.execute(f'CREATE DATABASE "{name}"')
    env = base_env(
        DATABASE_URL=pg.url(name), INTERCONNECT_VAR_DIR=str(var_dir), CELERY_BROKER_URL="memory://"
    )
    for args in (
        ["migrate", "--noinput", "-v0"],
        ["seed_national_topology", "-v0"],
        ["seed_demo", "--no-submit", "-v0"],
    ):
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")


class Platform:
    """One test's platform: its database, var dir, broker URL and processes."""

    def __init__(
        self,
        *,
        pg: PrivatePostgres,
        dbname: str,
        procs: ProcessGroup,
        var_dir: Path,
        broker_url: str = "memory://",
    ) -> None:
        self.pg = pg
        self.dbname = dbname
        self.procs = procs
        self.var_dir = var_dir
        self.broker_url = broker_url

    @property
    def database_url(self) -> str:
        return self.pg.url(self.dbname)

    def env(self, **extra: str) -> dict[str, str]:
        """The processes' environment; ``extra`` wins (e.g. a DATABASE_URL through a proxy)."""
        values = {
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "INTERCONNECT_VAR_DIR": str(self.var_dir),
        }
        return base_env(**{**values, **extra})

    def token(self, username: str = "zhongwei") -> str:
        """A demo user's bearer token (``seed_demo``; zhongwei administers an operator)."""
        return str(json.loads((self.var_dir / "demo-tokens.json").read_text())[username])

    def sql(self, query: str, params: tuple[object, ...] = ()) -> list[Any]:
        return self.pg.execute(query, params, dbname=self.dbname)

    def django(self, code: str, *, timeout: float = 120) -> Any:
        """Run ``code`` in a fresh Django process on this platform; returns ``RESULT`` as JSON.

        The test process itself is bound to pytest's database; this is how a test acts on the
        private one through the real services (``webhook_emit``, ``pool_submit``...).
        """
        script = (
            "import json, django\ndjango.setup()\nRESULT = None\n"
            + code
            + "\nprint('RESULT=' + json.dumps(RESULT))\n"
        )
        result = subprocess.run(
            [PYTHON, "-c", script], cwd=ROOT, env=self.env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"django script failed:\n{result.stderr[-3000:]}")
        line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT=")][-1]
        return json.loads(line.removeprefix("RESULT="))

    # --- processes -----------------------------------------------------------------------------

    def start_web(self, *, workers: int = 2, **extra_env: str) -> tuple[ManagedProcess, str]:
        """gunicorn ``interconnect.wsgi`` (sync workers), as Procfile.up runs it."""
        port = free_port()
        proc = self.procs.start(
            "web",
            [
                str(VENV_BIN / "gunicorn"), "interconnect.wsgi:application",
                "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--timeout", "30",
                "--graceful-timeout", "2",
            ],
            env=self.env(**extra_env),
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{base}/healthz") == 200, timeout=60, what="gunicorn")
        return proc, base

    def start_worker(
        self,
        name: str = "worker",
        *,
        concurrency: int = 2,
        visibility_timeout: float | None = None,
        task_time_limit: float | None = None,
        prefix: tuple[str, ...] = (),
        **extra_env: str,
    ) -> ManagedProcess:
        """A real prefork Celery worker; with a short visibility timeout through the harness.

        ``prefix`` runs it under another program, e.g. ``("faketime", "-f", "+5m")``.
        """
        worker_args = [
            "-l", "info", "-P", "prefork", "-c", str(concurrency), "-n", f"{name}-%h-{os.getpid()}",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if visibility_timeout is None:
            argv = [str(VENV_BIN / "celery"), "-A", "interconnect", "worker", *worker_args]
        else:
            argv = [
                PYTHON, "-m", "tests.harness.worker",
                "--visibility-timeout", str(visibility_timeout),
                "--task-time-limit", str(task_time_limit or visibility_timeout / 2),
                "--", *worker_args,
            ]  # fmt: skip
        proc = self.procs.start(name, [*prefix, *argv], env=self.env(LOG_LEVEL="INFO", **extra_env))
        wait_until(
            lambda: " ready." in proc.log() or not proc.alive(), timeout=60, what="celery worker"
        )
        if not proc.alive():
            raise RuntimeError(f"worker died:\n{proc.log()[-3000:]}")
        return proc


def http_status(url: str, *, timeout: float = 3.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def http_json(
    method: str, url: str, *, token: str | None = None, body: Any = None, timeout: float = 10.0
) -> tuple[int | None, Any, dict[str, str]]:
    """One HTTP call: (status or None when no answer, parsed body, headers)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, hdrs = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    except (urllib.error.URLError, OSError):
        return None, None, {}
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")[:500]
    return int(status), parsed, hdrs
