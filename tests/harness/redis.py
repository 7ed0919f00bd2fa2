"""A private ``redis-server`` on a free loopback port, to kill -9 and restart (X6).

``appendonly`` is the parameter that matters: without AOF a kill -9 loses every queued
message; with ``appendfsync everysec`` it loses at most about one second of writes.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from tests.harness.procs import ManagedProcess, ProcessGroup, free_port, wait_until


def redis_command(port: int, *args: str) -> bytes:
    """One RESP command over a raw socket (no client library state to reset after a kill)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


class PrivateRedis:
    """One private redis-server; ``kill()`` is SIGKILL, ``start()`` reuses the port and files."""

    def __init__(self, procs: ProcessGroup, *, appendonly: bool, base_dir: Path | None = None):
        self.procs = procs
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="ci-faults-redis-", dir=base_dir))
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",  # no RDB snapshots: only the AOF (when on) persists anything
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "no",
        ]  # fmt: skip
        self.process = self.procs.start("redis", argv, env={"PATH": "/usr/bin:/bin"})
        wait_until(self.ping, timeout=20, what="private redis-server")

    def ping(self) -> bool:
        try:
            return redis_command(self.port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9 the server: whatever is not in the AOF (or everything, without it) is gone."""
        assert self.process is not None
        self.process.kill()

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def queue_length(self, queue: str = "celery") -> int:
        reply = redis_command(self.port, "LLEN", queue)
        return int(reply[1:].split(b"\r\n")[0])

    def destroy(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
