"""Serve the platform's Telemetry gRPC service (agents' heartbeats) until SIGTERM or SIGINT;
its metrics on ``METRICS_PORT`` when set. Mutual TLS when the platform's certificate is
configured (``PLATFORM_TLS_DIR``, docs/tls.md): agents present their center's certificate."""

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from interconnect.metrics import start_metrics_server
from registry import certificates
from verification.rpc.telemetry import create_telemetry_server, stop_telemetry_server


class Command(BaseCommand):
    help = "Serve the Telemetry gRPC service (heartbeats from site agents)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=50052)
        parser.add_argument("--grace", type=float, default=5.0)

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        server, port = create_telemetry_server(f"{options['host']}:{options['port']}")
        start_metrics_server()
        mode = " (mutual TLS)" if certificates.mutual_tls() else ""
        self.stdout.write(f"telemetry listening on {options['host']}:{port}{mode}")
        self.stdout.flush()
        stopping.wait()
        stop_telemetry_server(server, options["grace"])
