"""The broker's gRPC server: the ``Broker`` service, standard health and reflection.

The server is ``grpc.aio``, on an event loop in a thread of its own, so a stream costs no
thread: ``WatchBooking`` waits on the booking's database notification (``brokers.notify``), and
1,000 watchers are 1,000 coroutines. Unary methods are the synchronous servicer
(``brokers.rpc.servicer``, Django underneath) behind the same interceptors as ever
(``brokers.rpc.interceptors``: metrics, authentication, error mapping), run in a pool of
``BROKER_GRPC_WORKERS`` threads; the interceptors see a context (:class:`CallContext`) that
turns ``abort`` into the aio call's status.

``build_server(address)`` builds and starts it and returns a :class:`BrokerRuntime` (port 0
picks a free port, for tests); with ``tls_files`` it serves TLS (``run_broker --tls-cert
--tls-key``; renewed files are served from the next connection on). Being an aio server, it is
built here rather than by the synchronous builder of the telemetry server and the agent
(``rpckit.server``), with the same interceptors, limits, health, reflection and credentials.
Several processes may serve one port (``SO_REUSEPORT``): each
must build its own server after ``fork()``, never inherit one (gRPC objects do not survive a
fork).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import Any, cast

import grpc
from django.conf import settings
from grpc_health.v1 import health as health_sync
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from brokers import booking_sql, group_commit, notify
from brokers.rpc.interceptors import (
    AbortedCall,
    AuthInterceptor,
    ErrorInterceptor,
    close_handler_connections,
)
from brokers.rpc.servicer import BrokerServicer, watch_booking
from interconnect.metrics import observe_grpc_call
from protos import broker_pb2, broker_pb2_grpc
from rpckit.interceptors import MetricsInterceptor
from rpckit.tls import CertFiles, ReloadingServerCredentials

logger = logging.getLogger(__name__)

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name
GRACE_SECONDS = 5.0
WATCH_METHOD = f"/{BROKER_SERVICE}/WatchBooking"


class CallContext:
    """What the synchronous interceptors and servicer see of an aio call, in a worker thread:
    ``abort`` records the status and raises :class:`AbortedCall`; the coroutine that ran the
    thread then ends the call with that status."""

    def __init__(self, call: grpc.aio.ServicerContext, remaining: float | None) -> None:
        self._call = call
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self.status: tuple[grpc.StatusCode, str, Any] | None = None

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.status = (code, details, None)
        raise AbortedCall(code, details)

    def abort_with_status(self, status: Any) -> None:
        self.status = (status.code, status.details, status.trailing_metadata)
        raise AbortedCall(status.code, status.details)

    def code(self) -> grpc.StatusCode | None:
        return None if self.status is None else self.status[0]

    def is_active(self) -> bool:
        return not self._call.done()

    def invocation_metadata(self) -> Any:
        return self._call.invocation_metadata()

    def peer(self) -> str:
        return self._call.peer()


class _Details:
    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


def _sync_handlers() -> dict[str, grpc.RpcMethodHandler]:
    """The generated code's method handlers of the synchronous servicer, by full method name."""
    captured: dict[str, grpc.RpcMethodHandler] = {}

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            for name, handler in handlers.items():
                captured[f"/{service}/{name}"] = handler

    broker_pb2_grpc.add_BrokerServicer_to_server(BrokerServicer(), Capture())
    return captured


class _AsyncBroker(grpc.GenericRpcHandler):
    """Unary methods: the interceptor chain and the servicer in a worker thread.
    ``WatchBooking``: a coroutine (``servicer.watch_booking``)."""

    def __init__(self, executor: futures.ThreadPoolExecutor) -> None:
        self.executor = executor
        self.handlers = _sync_handlers()
        self.interceptors = [
            MetricsInterceptor(observe_grpc_call),
            AuthInterceptor(),
            ErrorInterceptor(),
        ]

    def _intercepted(self, details: _Details) -> grpc.RpcMethodHandler | None:
        def step(i: int) -> Callable[[Any], Any]:
            if i == len(self.interceptors):
                return lambda d: self.handlers.get(d.method)
            return lambda d: self.interceptors[i].intercept_service(step(i + 1), d)

        return step(0)(details)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        sync = self.handlers.get(method)
        if sync is None:
            return None
        parse = sync.request_deserializer
        assert parse is not None

        async def parsed(raw: bytes, call: grpc.aio.ServicerContext) -> Any:
            # Parsed here, not by gRPC: bytes that are no message get the answer the classic
            # server gave (the aio server would say UNKNOWN).
            try:
                return parse(raw)
            except Exception:
                await call.abort(grpc.StatusCode.INTERNAL, "Exception deserializing request!")

        if method == WATCH_METHOD:
            executor = self.executor

            async def watch(raw: bytes, call: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                request = await parsed(raw, call)
                async for item in watch_booking(request, call, executor):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                watch, response_serializer=sync.response_serializer
            )
        call_details = _Details(method, details.invocation_metadata)

        def run(request: Any, context: CallContext) -> Any:
            handler = self._intercepted(call_details)
            assert handler is not None and handler.unary_unary is not None
            # The interceptors and servicer use only what CallContext offers of a context.
            return handler.unary_unary(request, cast(grpc.ServicerContext, context))

        async def unary(raw: bytes, call: grpc.aio.ServicerContext) -> Any:
            request = await parsed(raw, call)
            context = CallContext(call, call.time_remaining())
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self.executor, run, request, context)
            except AbortedCall:
                assert context.status is not None
                code, message, trailing = context.status
                await call.abort(code, message, trailing or ())

        return grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=sync.response_serializer
        )


class _Health:
    """The aio health servicer, driven from other threads."""

    def __init__(self, servicer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = servicer
        self.loop = loop

    def set(self, service: str, status: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.servicer.set(service, status), self.loop).result(5)

    def enter_graceful_shutdown(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.servicer.enter_graceful_shutdown(), self.loop).result(
            5
        )


class BrokerRuntime:
    """A started broker server and what its owner needs to stop it gracefully."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health: _Health,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        executor: futures.ThreadPoolExecutor,
        grouped: bool = False,
    ) -> None:
        self.server = server
        self.grouped = grouped
        self.group_stats: group_commit.Stats | None = None
        self.port = port
        self.health = health
        self.loop = loop
        self.thread = thread
        self.executor = executor
        self._stopped: threading.Event | None = None

    def stop(self, grace: float = GRACE_SECONDS) -> threading.Event:
        """NOT_SERVING first (load balancers drain), then refuse new calls and give in-flight
        ones ``grace`` seconds; the returned event is set once everything is closed."""
        if self._stopped is not None:
            return self._stopped
        stopped = self._stopped = threading.Event()
        self.health.enter_graceful_shutdown()
        done = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        threading.Thread(target=self._close_after, args=(done, stopped), daemon=True).start()
        return stopped

    def _close_after(self, done: Any, stopped: threading.Event) -> None:
        try:
            done.result()
        finally:
            notify.stop()
            self.executor.shutdown(wait=True)
            if self.grouped:
                self.group_stats = group_commit.stop()
            close_handler_connections()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            stopped.set()


def build_server(
    address: str,
    *,
    max_workers: int | None = None,
    reuse_port: bool = False,
    tls_files: CertFiles | None = None,
) -> BrokerRuntime:
    """Build and start the broker on ``address`` (port 0 picks a free port); TLS with
    ``tls_files`` (its certificate and key, re-read when renewed: ``rpckit.tls``)."""
    credentials = (
        ReloadingServerCredentials(tls_files, require_client_auth=False) if tls_files else None
    )
    limit = int(settings.BROKER_GRPC_MAX_MESSAGE_BYTES)
    workers = max_workers or int(settings.BROKER_GRPC_WORKERS)
    streams = int(getattr(settings, "BROKER_GRPC_MAX_STREAMS", 10_000))
    executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="broker")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="broker-aio", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int, Any]:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
            # Beyond this many calls in flight (streams included), new ones get
            # RESOURCE_EXHAUSTED instead of queueing.
            maximum_concurrent_rpcs=workers * 8 + streams,
        )
        server.add_generic_rpc_handlers((_AsyncBroker(executor),))
        health_servicer = health_sync.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service in ("", BROKER_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (
                BROKER_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials.credentials)
        if port == 0:
            raise OSError(f"cannot bind the broker's gRPC server to {address}")
        await server.start()
        return server, port, health_servicer

    try:
        server, port, health_servicer = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        executor.shutdown(wait=False)
        raise
    # Notifications wake WatchBooking streams and refresh the placement snapshot.
    notify.start()
    grouped = _group_commit_wanted()
    if grouped:
        group_commit.start(
            int(getattr(settings, "BROKER_GROUP_COMMIT_MAX", 32)),
            int(getattr(settings, "BROKER_GROUP_COMMIT_FLIGHTS", 1)),
        )
    logger.info("broker listening on port %d", port)
    return BrokerRuntime(
        server, port, _Health(health_servicer, loop), loop, thread, executor, grouped
    )


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
