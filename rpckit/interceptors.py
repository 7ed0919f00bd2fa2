"""Server interceptor plumbing shared by every gRPC server: wrapping a method's behaviour (unary
and server-streaming alike), the base of every interceptor of the project
(:class:`MethodInterceptor`: health and reflection pass untouched), the metrics interceptor and
the agent's peer-identity check. No Django.

``wrap(handler, around)`` runs a handler inside ``around(behaviour, request, context)``; for a
server stream, ``behaviour`` returns a :class:`Drain` whose iterator each layer may wrap, so
context variables, error mapping and timing also cover items produced after the handler
returned.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from rpckit.server import OPEN_SERVICES
from rpckit.tls import identity_of, peer_pem

logger = logging.getLogger(__name__)

# What a method's behaviour runs inside: ``around(behaviour, request, context)``.
Around = Callable[[Callable[..., Any], Any, grpc.ServicerContext], Any]


def wrap(
    handler: grpc.RpcMethodHandler[Any, Any], around: Around
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


class MethodInterceptor(grpc.ServerInterceptor):
    """An interceptor of the project's methods: each call of a method runs inside
    :meth:`around_method`; health and reflection (``OPEN_SERVICES``) pass untouched."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        return wrap(handler, self.around_method(details))

    @abc.abstractmethod
    def around_method(self, details: grpc.HandlerCallDetails) -> Around:
        """What each call of the method ``details`` names runs inside."""


class MetricsInterceptor(MethodInterceptor):
    """Duration and status code of every call (health and reflection left out), reported to
    ``observe(method, code, seconds)``.

    The code is the one the call ends with: OK, the code a handler or an inner interceptor
    aborted with (UNAUTHENTICATED, a mapped domain error), or UNKNOWN for an exception that
    escaped them. Requests gRPC could not deserialize never reach a handler and are not counted.
    """

    def __init__(self, observe: Callable[[str, str, float], None]) -> None:
        self.observe = observe

    def around_method(self, details: grpc.HandlerCallDetails) -> Around:
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

        return around


class PeerIdentityInterceptor(MethodInterceptor):
    """PERMISSION_DENIED unless the caller's certificate (mutual TLS) names ``allowed``.

    The handshake has already checked that the certificate is the authority's and not expired;
    this checks *who* it names: the agent serves the platform only, never another center's agent
    holding a certificate of the same authority. Health and reflection stay open to any holder
    of a certificate. ``is_revoked(pem)`` may refuse a listed certificate (UNAUTHENTICATED).
    """

    def __init__(
        self, allowed: str, *, is_revoked: Callable[[bytes], str | None] | None = None
    ) -> None:
        self.allowed = allowed
        self.is_revoked = is_revoked

    def check(self, context: grpc.ServicerContext) -> None:
        pem = peer_pem(context)
        if pem is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        assert pem is not None
        identity = identity_of(pem)
        if identity != self.allowed:
            logger.warning("refused a caller whose certificate names %s", identity or "nothing")
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the caller's certificate names {identity or 'no identity'}, not {self.allowed}",
            )
        refused = self.is_revoked(pem) if self.is_revoked else None
        if refused:
            logger.warning("refused a revoked certificate: %s", refused)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, refused)

    def around_method(self, details: grpc.HandlerCallDetails) -> Around:
        def around(
            behaviour: Callable[..., Any], request: Any, context: grpc.ServicerContext
        ) -> Any:
            self.check(context)
            return behaviour(request, context)

        return around
