"""Server interceptor plumbing shared by every gRPC server: wrapping a method's behaviour (unary
and server-streaming alike) and the metrics interceptor. No Django.

``wrap(handler, around)`` runs a handler inside ``around(behaviour, request, context)``; for a
server stream, ``behaviour`` returns a :class:`Drain` whose iterator each layer may wrap, so
context variables, error mapping and timing also cover items produced after the handler
returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from rpckit.server import OPEN_SERVICES


def wrap(
    handler: grpc.RpcMethodHandler[Any, Any], around: Callable[[Callable[..., Any], Any, Any], Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler whose behaviour runs inside ``around`` (unary-unary and unary-stream)."""
    if handler.unary_unary is not None:
        inner = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: around(inner, req, ctx),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        def stream(req: Any, ctx: Any) -> Iterator[Any]:
            # The generator runs after the handler returns: keep the context for every item.
            yield from around(lambda r, c: Drain(inner(r, c)), req, ctx)

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class Drain(list[Any]):
    """A response stream passed through ``around`` unconsumed: each layer wraps its iterator,
    so context variables and error mapping also cover the items produced later."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        super().__init__()
        self.iterator = iterator

    def __iter__(self) -> Iterator[Any]:
        return self.iterator


def timed(iterator: Iterator[Any], done: Callable[[str | None], None]) -> Iterator[Any]:
    """Iterate a response stream; ``done`` once it ends (None), fails or is closed."""
    ended: str | None = None
    try:
        yield from iterator
    except GeneratorExit:
        ended = "CANCELLED"
        raise
    except BaseException:
        ended = "UNKNOWN"
        raise
    finally:
        done(ended)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Duration and status code of every call (health and reflection left out), reported to
    ``observe(method, code, seconds)``.

    The code is the one the call ends with: OK, the code a handler or an inner interceptor
    aborted with (UNAUTHENTICATED, a mapped domain error), or UNKNOWN for an exception that
    escaped them. Requests gRPC could not deserialize never reach a handler and are not counted.
    """

    def __init__(self, observe: Callable[[str, str, float], None]) -> None:
        self.observe = observe

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        method = details.method.rsplit("/", 1)[-1]

        def observe(context: grpc.ServicerContext, started: float, ended: str | None) -> None:
            # ``ended``: None when the handler returned, else what to call an exception that
            # left no status behind (UNKNOWN; CANCELLED for a stream the client closed).
            code = context.code()  # type: ignore[attr-defined]  # grpcio >= 1.38; not in the stubs
            name = code.name if isinstance(code, grpc.StatusCode) else (ended or "OK")
            self.observe(method, name, time.perf_counter() - started)

        def around(
            behaviour: Callable[..., Any], request: Any, context: grpc.ServicerContext
        ) -> Any:
            started = time.perf_counter()
            try:
                result = behaviour(request, context)
            except BaseException:
                observe(context, started, "UNKNOWN")
                raise
            if isinstance(result, Drain):
                return Drain(timed(result.iterator, lambda e: observe(context, started, e)))
            observe(context, started, None)
            return result

        return wrap(handler, around)
