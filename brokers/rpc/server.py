"""The broker's gRPC server: the ``Broker`` service, standard health and reflection.

Built by the project's one server builder in its ``grpc.aio`` variant
(``rpckit.aio.build_aio_server``: health, reflection, message limits, the cap on calls in
flight, credentials, graceful stop), on an event loop in a thread of its own, so a stream costs
no thread: ``WatchBooking`` waits on the booking's database notification (``brokers.notify``),
and 1,000 watchers are 1,000 coroutines. Unary methods are the synchronous servicer
(``brokers.rpc.servicer``, Django underneath) behind the interceptors the telemetry server
has too (``rpckit.interceptors`` and ``registry.rpc``: metrics, authentication, error mapping),
run in a pool of ``BROKER_GRPC_WORKERS`` threads; the interceptors see a
``rpckit.aio.CallContext`` that turns ``abort`` into the aio call's status.

``build_server(address)`` builds and starts it and returns its :class:`BrokerRuntime` (port 0
picks a free port, for tests); with ``tls_files`` it serves TLS (``run_broker --tls-cert
--tls-key``; renewed files are served from the next connection on). Several processes may
serve one port (``SO_REUSEPORT``): each must build its own server after ``fork()``, never
inherit one (gRPC objects do not survive a fork).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from brokers import booking_sql, group_commit, notify
from brokers.rpc.servicer import (
    ERROR_FIELD,
    HANDLER_CONNECTIONS,
    BrokerServicer,
    watch_booking,
)
from interconnect.metrics import observe_grpc_call
from protos import broker_pb2, broker_pb2_grpc
from registry.rpc import AuthInterceptor, ErrorInterceptor
from rpckit.aio import AioRuntime, build_aio_server
from rpckit.interceptors import MetricsInterceptor
from rpckit.server import ServerTls, Service
from rpckit.tls import CertFiles

logger = logging.getLogger(__name__)

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name
GRACE_SECONDS = 5.0
WATCH_METHOD = f"/{BROKER_SERVICE}/WatchBooking"


@dataclass
class BrokerRuntime(AioRuntime):
    """A started broker (``port``, ``health``, ``stop(grace)``: ``rpckit.aio``), and whether it
    groups bookings into shared transactions (``brokers.group_commit``), with the figures of
    that once stopped."""

    grouped: bool = False
    group_stats: group_commit.Stats | None = None

    def stop_group_commit(self) -> None:
        self.group_stats = group_commit.stop()


def build_server(
    address: str,
    *,
    max_workers: int | None = None,
    reuse_port: bool = False,
    tls_files: CertFiles | None = None,
) -> BrokerRuntime:
    """Build and start the broker on ``address`` (port 0 picks a free port); TLS with
    ``tls_files`` (its certificate and key, re-read when renewed: ``rpckit.tls``)."""
    workers = max_workers or int(settings.BROKER_GRPC_WORKERS)
    streams = int(getattr(settings, "BROKER_GRPC_MAX_STREAMS", 10_000))
    runtime = build_aio_server(
        address,
        name="broker",
        services=[
            Service(BROKER_SERVICE, broker_pb2_grpc.add_BrokerServicer_to_server, BrokerServicer())
        ],
        # Outermost first: the metric sees the status the inner ones end the call with.
        interceptors=[
            MetricsInterceptor(observe_grpc_call),
            AuthInterceptor(HANDLER_CONNECTIONS),
            ErrorInterceptor(field=ERROR_FIELD, server="broker"),
        ],
        streams={WATCH_METHOD: watch_booking},
        max_workers=workers,
        max_message_bytes=int(settings.BROKER_GRPC_MAX_MESSAGE_BYTES),
        # Beyond this many calls in flight (streams included), new ones get RESOURCE_EXHAUSTED
        # instead of queueing.
        maximum_concurrent_rpcs=workers * 8 + streams,
        reuse_port=reuse_port,
        tls=ServerTls(tls_files, require_client_auth=False) if tls_files else None,
        grace_seconds=GRACE_SECONDS,
        runtime_type=BrokerRuntime,
    )
    assert isinstance(runtime, BrokerRuntime)
    # Notifications wake WatchBooking streams and refresh the placement snapshot; once the
    # server has stopped (its handler threads idle), the listener stops, the group commit
    # drains and the handler threads' connections close.
    notify.start()
    runtime.on_stopped.append(notify.stop)
    runtime.grouped = _group_commit_wanted()
    if runtime.grouped:
        group_commit.start(
            int(getattr(settings, "BROKER_GROUP_COMMIT_MAX", 32)),
            int(getattr(settings, "BROKER_GROUP_COMMIT_FLIGHTS", 1)),
        )
        runtime.on_stopped.append(runtime.stop_group_commit)
    runtime.on_stopped.append(HANDLER_CONNECTIONS.close)
    return runtime


def _group_commit_wanted() -> bool:
    return bool(getattr(settings, "BROKER_GROUP_COMMIT", True)) and booking_sql.available()


def create_server(address: str, *, max_workers: int | None = None) -> tuple[Any, int]:
    """Build and start the broker; returns its runtime and the bound port."""
    runtime = build_server(address, max_workers=max_workers)
    return runtime, runtime.port


def serve(
    address: str,
    *,
    max_workers: int | None = None,
    reuse_port: bool = False,
    tls_files: CertFiles | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    runtime = build_server(
        address, max_workers=max_workers, reuse_port=reuse_port, tls_files=tls_files
    )
    print(f"broker listening on port {runtime.port}{' (TLS)' if tls_files else ''}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    runtime.stop().wait()
    if runtime.group_stats is not None:
        s = runtime.group_stats
        print(
            f"group commit: {s.bookings} bookings in {s.batches} batches (largest "
            f"{s.largest}), {s.failed_batches} batches failed and retried alone",
            flush=True,
        )
