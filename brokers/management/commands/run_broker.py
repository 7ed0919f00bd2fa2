"""``python manage.py run_broker --port 50051 --processes N [--tls-cert PEM --tls-key PEM]``:
the gRPC broker (TLS with a certificate and key; renewed files are served without a restart).

With several processes, the parent forks N children that each build their own server on the
same port with ``SO_REUSEPORT`` (the kernel spreads connections); the parent does no gRPC work
and closes its database connections before forking, so nothing gRPC- or socket-related is
shared across the fork. SIGTERM to the parent stops every child gracefully. With
``METRICS_PORT`` the serving process (the parent with several) exposes the metrics of all of
them (``interconnect.metrics.start_metrics_server``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections


class Command(BaseCommand):
    help = "Serve the gRPC broker (several processes on one port with --processes)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=50051)
        parser.add_argument("--processes", type=int, default=1)
        parser.add_argument("--workers", type=int, default=None, help="threads per process")
        parser.add_argument("--tls-cert", help="serve TLS with this certificate (PEM chain)")
        parser.add_argument("--tls-key", help="the certificate's private key (PEM)")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port, processes = options["host"], options["port"], options["processes"]
        if processes < 1:
            self.stderr.write("--processes must be at least 1")
            sys.exit(2)
        if processes > 1 and port == 0:
            self.stderr.write("several processes need a fixed --port to share")
            sys.exit(2)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        from brokers.rpc.server import serve
        from interconnect.metrics import start_metrics_server
        from rpckit.tls import CertFiles, TlsError

        tls_files = None
        if bool(options["tls_cert"]) != bool(options["tls_key"]):
            self.stderr.write("--tls-cert and --tls-key go together")
            sys.exit(2)
        if options["tls_cert"]:
            tls_files = CertFiles(cert=Path(options["tls_cert"]), key=Path(options["tls_key"]))
            try:
                tls_files.read()
            except TlsError as exc:
                self.stderr.write(f"cannot serve TLS: {exc}")
                sys.exit(2)

        if processes == 1:
            start_metrics_server()
            serve(address, max_workers=options["workers"], tls_files=tls_files)
            return
        connections.close_all()  # no inherited database sockets in the children
        children: list[int] = []
        for _ in range(processes):
            pid = os.fork()
            if pid == 0:
                try:
                    serve(
                        address,
                        max_workers=options["workers"],
                        reuse_port=True,
                        tls_files=tls_files,
                    )
                finally:
                    os._exit(0)
            children.append(pid)
        # After the forks: the children inherit no metrics socket or server thread.
        start_metrics_server()
        self._supervise(children)

    def _supervise(self, children: list[int]) -> None:
        def forward(signum: int, frame: object) -> None:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        alive = set(children)
        while alive:
            try:
                pid, _ = os.wait()
            except ChildProcessError:
                break
            alive.discard(pid)
            if alive and pid in children:
                # One child died on its own: stop the rest rather than serve at half strength
                # silently (a supervisor restarts the whole broker).
                forward(signal.SIGTERM, None)
            time.sleep(0)
