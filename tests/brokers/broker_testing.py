"""Real processes for the broker's tests: broker servers, a Celery worker, simulated agents.

Each runs against this test session's database (``test_<name>`` as pytest-django made it) and
Redis db of ``CELERY_BROKER_URL``. Processes are stopped by the pid we started, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connection, connections, transaction

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_database_url() -> str:
    """The URL of the database pytest-django created, for child processes."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else "")
    return (
        f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/"
        f"{connection.settings_dict['NAME']}"
    )


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=session_database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        DJANGO_SETTINGS_MODULE="interconnect.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run_cli(port: int, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``interconnect`` command line against the broker on ``port``, as ``token``."""
    env = {
        **os.environ,
        "INTERCONNECT_TOKEN": token,
        "INTERCONNECT_BROKER": f"127.0.0.1:{port}",
    }
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "interconnect"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class PoolLock:
    """A pool row held ``FOR UPDATE`` by another transaction: bookings of it wait."""

    def __init__(self, pool_id: int) -> None:
        self.pool_id = pool_id
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold)
        self.pid = 0  # the holding backend

    def _hold(self) -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cur:
                    cur.execute(
                        "SELECT 1 FROM registry_pool WHERE id = %s FOR UPDATE", [self.pool_id]
                    )
                    cur.execute("SELECT pg_backend_pid()")
                    row = cur.fetchone()
                    assert row is not None
                    self.pid = int(row[0])
                self.locked.set()
                self.release.wait(30)
        finally:
            connections.close_all()

    def __enter__(self) -> PoolLock:
        self.thread.start()
        assert self.locked.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Child:
    """A started process whose output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: we signal it and its children, nothing else
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def broker_processes(processes: int = 2) -> Iterator[tuple[int, Child]]:
    """``manage.py run_broker --processes N`` on a free port; yields the port."""
    port = free_port()
    child = Child(
        [PYTHON, "manage.py", "run_broker", "--port", str(port), "--processes", str(processes)],
        child_env(BROKER_DISPATCH="0"),
    )
    try:
        wait_for(
            lambda: sum("broker listening" in line for line in child.lines) >= processes,
            timeout=60,
            what=f"{processes} broker processes\n{child.output()}",
        )
        yield port, child
    finally:
        child.stop()


@contextmanager
def celery_worker() -> Iterator[Child]:
    """A real Celery worker process (prefork, 2 children) on this session's Redis db."""
    from interconnect.celery import app

    app.control.purge()  # tasks left by earlier tests refer to flushed rows
    child = Child(
        [
            str(ROOT / ".venv" / "bin" / "celery"),
            "-A",
            "interconnect",
            "worker",
            "-l",
            "info",
            "--concurrency",
            "2",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"broker-test-{os.getpid()}@%h",
        ],
        child_env(),
    )
    try:
        wait_for(
            lambda: any("ready" in line for line in child.lines),
            timeout=60,
            what=f"celery worker\n{child.output()}",
        )
        yield child
    finally:
        child.stop()
        sys.stdout.write("")
