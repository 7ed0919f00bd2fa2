"""The ``grpc.aio`` variant of the one server builder (``rpckit.server``), for the broker.

A server on an event loop in a thread of its own, so a stream costs no thread: a streaming
method given in ``streams`` is a coroutine (1,000 watchers are 1,000 coroutines). Every other
method is the synchronous servicer behind the synchronous interceptors (``grpc.ServerInterceptor``:
metrics, authentication, error mapping), run in a pool of ``max_workers`` threads; they see a
:class:`CallContext` whose ``abort`` becomes the aio call's status. Health (``""`` and each
service SERVING), reflection, explicit message limits, the cap on calls in flight, credentials
and the graceful stop (:meth:`AioRuntime.stop`) are those of ``rpckit.server.build_server``.

Build the server after ``fork()``, never inherit one (gRPC objects do not survive a fork). No
Django.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rpckit.server import (
    ServerTls,
    Service,
    bind,
    log_listening,
    reflected,
    server_options,
)
from rpckit.tls import ReloadingServerCredentials

logger = logging.getLogger(__name__)

# A streaming method as a coroutine: (request, the aio call, the worker pool for blocking work).
AsyncStream = Callable[
    [Any, grpc.aio.ServicerContext[Any, Any], futures.Executor], AsyncIterator[Any]
]


class AbortedCall(Exception):
    """Raised by :meth:`CallContext.abort` in a worker thread; the status is already recorded
    and the coroutine that ran the thread ends the call with it. Error-mapping interceptors
    must let it through unmapped."""


class CallContext:
    """What the synchronous interceptors and servicer see of an aio call, in a worker thread:
    ``abort`` records the status and raises :class:`AbortedCall`; the coroutine that ran the
    thread then ends the call with that status."""

    def __init__(self, call: grpc.aio.ServicerContext[Any, Any], remaining: float | None) -> None:
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
    """The call details the synchronous interceptors read."""

    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


def sync_handlers(services: Sequence[Service]) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The generated code's method handlers of the synchronous servicers, by full method name."""
    captured: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            for name, handler in handlers.items():
                captured[f"/{service}/{name}"] = handler

    for service in services:
        service.add(service.servicer, cast(grpc.Server, Capture()))
    return captured


class _Bridge(grpc.GenericRpcHandler):
    """Unary methods: the interceptor chain and the servicer in a worker thread. Methods in
    ``streams``: their coroutine (which applies the interceptors' rules itself)."""

    def __init__(
        self,
        services: Sequence[Service],
        interceptors: Sequence[grpc.ServerInterceptor],
        streams: Mapping[str, AsyncStream],
        executor: futures.ThreadPoolExecutor,
    ) -> None:
        self.executor = executor
        self.handlers = sync_handlers(services)
        self.interceptors = list(interceptors)
        self.streams = dict(streams)

    def _intercepted(self, details: _Details) -> grpc.RpcMethodHandler[Any, Any] | None:
        def step(i: int) -> Callable[[Any], Any]:
            if i == len(self.interceptors):
                return lambda d: self.handlers.get(d.method)
            return lambda d: self.interceptors[i].intercept_service(step(i + 1), d)

        handler: grpc.RpcMethodHandler[Any, Any] | None = step(0)(details)
        return handler

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        sync = self.handlers.get(method)
        if sync is None:
            return None
        parse = sync.request_deserializer
        assert parse is not None

        async def parsed(raw: bytes, call: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # Parsed here, not by gRPC: bytes that are no message get the answer the classic
            # server gives (the aio server would say UNKNOWN).
            try:
                return parse(raw)
            except Exception:
                await call.abort(grpc.StatusCode.INTERNAL, "Exception deserializing request!")

        stream = self.streams.get(method)
        if stream is not None:
            executor = self.executor

            async def streaming(
                raw: bytes, call: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                request = await parsed(raw, call)
                async for item in stream(request, call, executor):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streaming, response_serializer=sync.response_serializer
            )
        call_details = _Details(method, handler_call_details.invocation_metadata)

        def run(request: Any, context: CallContext) -> Any:
            handler = self._intercepted(call_details)
            assert handler is not None and handler.unary_unary is not None
            # The interceptors and servicer use only what CallContext offers of a context.
            return handler.unary_unary(request, cast(grpc.ServicerContext, context))

        async def unary(raw: bytes, call: grpc.aio.ServicerContext[Any, Any]) -> Any:
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


class AioHealth:
    """The aio health servicer, driven from other threads (as the synchronous one is)."""

    def __init__(self, servicer: health.aio.HealthServicer, loop: asyncio.AbstractEventLoop):
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


@dataclass
class AioRuntime:
    """A started aio server and what its owner needs to stop it gracefully."""

    server: grpc.aio.Server
    port: int
    health: AioHealth
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    executor: futures.ThreadPoolExecutor
    grace_seconds: float = 5.0
    credentials: ReloadingServerCredentials | None = None
    # Run once the server has stopped and the worker threads are idle, before the loop closes
    # (the owner's cleanup: listeners, the workers' database connections).
    on_stopped: list[Callable[[], None]] = field(default_factory=list)
    _stopped: threading.Event | None = None

    def stop(self, grace: float | None = None) -> threading.Event:
        """NOT_SERVING first (load balancers drain), then refuse new calls and give in-flight
        ones ``grace`` seconds; the returned event is set once everything is closed (a second
        call returns the same event)."""
        if self._stopped is not None:
            return self._stopped
        stopped = self._stopped = threading.Event()
        self.health.enter_graceful_shutdown()
        done = asyncio.run_coroutine_threadsafe(
            self.server.stop(self.grace_seconds if grace is None else grace), self.loop
        )
        threading.Thread(target=self._close_after, args=(done, stopped), daemon=True).start()
        return stopped

    def _close_after(self, done: concurrent.futures.Future[None], stopped: threading.Event) -> None:
        try:
            done.result()
        finally:
            self.executor.shutdown(wait=True)
            for callback in self.on_stopped:
                try:
                    callback()
                except Exception:
                    logger.exception("cleanup after the server stopped failed")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            stopped.set()


def build_aio_server(
    address: str,
    *,
    name: str,
    services: Sequence[Service],
    max_workers: int,
    max_message_bytes: int,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    streams: Mapping[str, AsyncStream] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    reuse_port: bool = False,
    tls: ServerTls | None = None,
    grace_seconds: float = 5.0,
    runtime_type: type[AioRuntime] = AioRuntime,
) -> AioRuntime:
    """Build and start an aio server on ``address`` (port 0 picks a free port), on an event
    loop in a thread of its own; ``streams`` maps full method names to coroutines. The runtime
    is a ``runtime_type`` (a subclass whose further fields have defaults: the owner's state)."""
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{name}-aio", daemon=True)
    thread.start()
    bridge = _Bridge(services, interceptors, streams or {}, executor)

    async def start() -> tuple[grpc.aio.Server, int, Any, ReloadingServerCredentials | None]:
        server = grpc.aio.server(
            options=server_options(max_message_bytes, reuse_port),
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers((bridge,))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service_name in ("", *(s.name for s in services)):  # "" is the whole server
            await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(reflected(services), server)
        port, credentials = bind(server, address, name=name, tls=tls)
        await server.start()
        return server, port, health_servicer, credentials

    try:
        server, port, health_servicer, credentials = asyncio.run_coroutine_threadsafe(
            start(), loop
        ).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        executor.shutdown(wait=False)
        raise
    log_listening(name, port, tls)
    return runtime_type(
        server=server,
        port=port,
        health=AioHealth(health_servicer, loop),
        loop=loop,
        thread=thread,
        executor=executor,
        grace_seconds=grace_seconds,
        credentials=credentials,
    )
