"""The broker's gRPC server: the ``Broker`` service, standard health and reflection.

``create_server(address)`` builds and starts it and returns ``(server, port)`` so tests can bind
port 0. Several processes may serve one port (``SO_REUSEPORT``): each must build its own server
after ``fork()``, never inherit one (gRPC objects do not survive a fork).
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from django.conf import settings
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from brokers.rpc.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    close_handler_connections,
)
from brokers.rpc.servicer import BrokerServicer
from protos import broker_pb2, broker_pb2_grpc

logger = logging.getLogger(__name__)

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name
GRACE_SECONDS = 5.0


@dataclass
class BrokerRuntime:
    """A started broker server and what its owner needs to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float = GRACE_SECONDS) -> threading.Event:
        """NOT_SERVING first (load balancers drain), then refuse new calls and give in-flight
        ones ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        threading.Thread(target=self._close_after, args=(stopped,), daemon=True).start()
        return stopped

    @staticmethod
    def _close_after(stopped: threading.Event) -> None:
        stopped.wait()
        close_handler_connections()


def build_server(
    address: str, *, max_workers: int | None = None, reuse_port: bool = False
) -> BrokerRuntime:
    """Build and start the broker on ``address`` (port 0 picks a free port)."""
    limit = int(settings.BROKER_GRPC_MAX_MESSAGE_BYTES)
    workers = max_workers or int(settings.BROKER_GRPC_WORKERS)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="broker"),
        interceptors=[MetricsInterceptor(), AuthInterceptor(), ErrorInterceptor()],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        # Beyond this many calls in flight, new ones get RESOURCE_EXHAUSTED instead of queueing.
        maximum_concurrent_rpcs=workers * 8,
    )
    broker_pb2_grpc.add_BrokerServicer_to_server(BrokerServicer(), server)
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", BROKER_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            BROKER_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the broker's gRPC server to {address}")
    server.start()
    logger.info("broker listening on port %d", port)
    return BrokerRuntime(server=server, port=port, health=health_servicer)


def create_server(address: str, *, max_workers: int | None = None) -> tuple[grpc.Server, int]:
    """Build and start the broker; returns it and the bound port."""
    runtime = build_server(address, max_workers=max_workers)
    return runtime.server, runtime.port


def serve(address: str, *, max_workers: int | None = None, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    runtime = build_server(address, max_workers=max_workers, reuse_port=reuse_port)
    print(f"broker listening on port {runtime.port}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    runtime.stop().wait()
