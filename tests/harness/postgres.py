"""A private PostgreSQL 15 cluster on a free loopback port, to restart, crash and cut.

The server refuses to run as root, so ``initdb`` and ``pg_ctl`` run as the ``postgres`` OS user
(``runuser``) on a data directory that user owns. ``fsync`` and ``synchronous_commit`` stay on:
the crash rows (X4) measure durability, which a cluster without fsync would fake.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.harness.procs import free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# PostgreSQL refuses to run as root: as root, run its tools as the ``postgres`` OS user; as
# anyone else, as ourselves.
RUN_AS = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """One private cluster: ``start``/``stop``/``restart(mode)``, ``terminate_backends``."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ci-faults-pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        if RUN_AS:
            pg_user = pwd.getpwnam("postgres")
            os.chown(self.root, pg_user.pw_uid, pg_user.pw_gid)

    # --- lifecycle -----------------------------------------------------------------------------

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RUN_AS, *args],
            cwd=self.root,  # postgres cannot read the repository's directory
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def init(self) -> PrivatePostgres:
        self._pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # only initdb's own final sync; the server runs with fsync on
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# ci fault harness\n"
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "full_page_writes = on\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%m [%p] '\n"
            )
        return self

    def start(self) -> None:
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_until(self.ready, timeout=30, what="private PostgreSQL to accept connections")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean) or ``immediate`` (a crash: WAL recovery on start)."""
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
            check=False,
        )

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast``, or an ``immediate`` stop followed by a start (crash)."""
        if mode == "fast":
            self._pg(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            )
            wait_until(self.ready, timeout=30, what="private PostgreSQL after restart")
        else:
            self.stop(mode)
            self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # --- access --------------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
            **kwargs,  # type: ignore[arg-type]
        )

    def ready(self) -> bool:
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def execute(self, sql: str, params: tuple[object, ...] = (), dbname: str = "postgres") -> list:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def clone(self, template: str, name: str) -> str:
        """A new database copied from ``template`` (a fraction of a second, unlike migrating).

        FILE_COPY, not PostgreSQL 15's default WAL_LOG: after an immediate stop, a WAL_LOG copy
        came back with its identity sequences at the template's values (duplicate primary keys
        on the next inserts), which would be a harness artifact in the crash rows (X4).
        FILE_COPY checkpoints, so the copy starts from durable state like a real database.
        """
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def terminate_backends(self, dbname: str, *, limit: int | None = None) -> int:
        """``pg_terminate_backend`` on client backends of ``dbname`` (all, or ``limit`` random)."""
        sql = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "ORDER BY random()"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with contextlib.suppress(psycopg.Error):
            return sum(1 for (ok,) in self.execute(sql, (dbname,)) if ok)
        return 0
