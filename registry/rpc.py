"""The interceptors of the platform's gRPC servers (the broker and the telemetry server): who is
calling, how errors become statuses, and the call's environment.

``AuthInterceptor`` reads ``authorization: Bearer <token>`` (``rpckit.auth``) with the same
lookup as the REST API (``registry.services.user_for_token``), cached briefly per process, and
aborts UNAUTHENTICATED otherwise (UNAVAILABLE when the database is away); it also prepares the
call's environment: Django connections fit for this thread, the request id, the remaining
deadline (``registry.context``), the caller (:data:`current_user`). ``ErrorInterceptor`` maps
errors to statuses from the error catalog (``registry.errors.rpc_status_for``), for unary and
streaming methods alike: a domain error is its entry's status with details; anything else is
INTERNAL, logged with the method name. Health and reflection stay open.

Here, in the registry, because both servers use them and the layers point one way
(brokers -> verification -> registry). ``rpckit.interceptors.MetricsInterceptor``, outermost,
records every call's duration and final status code.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
)
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from protos.errors import ERRORS, reason_status
from registry.context import deadline_at, new_request_id, request_id_var, server_deadline
from registry.errors import rpc_status_for
from registry.services import user_for_token
from rpckit.aio import AbortedCall
from rpckit.auth import bearer_from_header
from rpckit.interceptors import Around, Drain, MethodInterceptor

logger = logging.getLogger(__name__)

# The authenticated user of the current call (set by AuthInterceptor around the handler).
current_user: contextvars.ContextVar[Any] = contextvars.ContextVar("rpc_user", default=None)

UNAUTHENTICATED_MESSAGE = "A valid bearer token is required."
DATABASE_UNAVAILABLE_MESSAGE = "The database is unavailable; retry."


def refusal(reason: str, message: str) -> grpc.Status:
    """The status a door refuses a call with, from the catalog entry ``reason`` (its code and
    an ErrorInfo with the reason), for ``context.abort_with_status``."""
    status: grpc.Status = rpc_status.to_status(reason_status(ERRORS[reason], reason, message))
    return status


class HandlerConnections:
    """The database connections a server's handler threads opened, so that the stopped server
    can close them (Django connections are per thread, and the pool's threads outlive the calls).
    One per server: stopping one server leaves another's connections alone."""

    def __init__(self) -> None:
        self._held: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def remember(self) -> None:
        """Note this thread's connection."""
        conn = connections["default"]
        with self._lock:
            self._held.add(conn)

    def close(self) -> None:
        """Close the noted connections (call after the server stopped)."""
        with self._lock:
            held = list(self._held)
            self._held.clear()
        for conn in held:
            if conn.connection is not None:
                # Closed from another thread on purpose: the owning thread is idle for good.
                conn.connection.close()
                conn.connection = None


# A token is looked up in the database at most this often per process (seconds): a revoked
# token keeps working that long on a server that saw it, in exchange for one query less per call.
AUTH_CACHE_SECONDS = 5.0
# Connection age and health are checked at most this often per handler thread (seconds); the
# health check is a round trip, too dear for every call: at 1 s, with 16 handler threads per
# process, it was one booking in five (bench/profiles/check-1s.svg). A connection that
# saw an error is checked on its next call regardless, so a database restart costs each thread
# one failed call, not ten seconds of them.
CONNECTION_CHECK_SECONDS = 10.0

_auth_cache: dict[str, tuple[float, Any]] = {}
_auth_lock = threading.Lock()
_thread_state = threading.local()


def authenticate(header: str) -> Any:
    """The user of an ``authorization`` header value, or None; cached briefly per process."""
    token = bearer_from_header(header)
    if token is None:
        return None
    key = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _auth_lock:
        hit = _auth_cache.get(key)
    if hit is not None and now - hit[0] < AUTH_CACHE_SECONDS:
        return hit[1]
    user = user_for_token(token)
    with _auth_lock:
        if len(_auth_cache) > 10_000:
            _auth_cache.clear()
        if user is not None:
            _auth_cache[key] = (now, user)
        else:
            _auth_cache.pop(key, None)
    return user


def fit_connection() -> None:
    """Drop this thread's connection if it is too old or broken (Django's per-request check),
    at most once per ``CONNECTION_CHECK_SECONDS``, and right after an error."""
    now = time.monotonic()
    if (
        connections["default"].errors_occurred
        or now - getattr(_thread_state, "checked", 0.0) >= CONNECTION_CHECK_SECONDS
    ):
        close_old_connections()
        _thread_state.checked = now


class AuthInterceptor(MethodInterceptor):
    """UNAUTHENTICATED unless the metadata carries a valid bearer token; notes the handler
    threads' connections in ``connections`` (close them once the server stopped)."""

    def __init__(self, connections: HandlerConnections | None = None) -> None:
        self.connections = connections or HandlerConnections()

    def around_method(self, details: grpc.HandlerCallDetails) -> Around:
        metadata = dict(details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        request_id = new_request_id(str(metadata.get("x-request-id", "")) or None)

        def around(
            behaviour: Callable[..., Any], request: Any, context: grpc.ServicerContext
        ) -> Any:
            # Django connections are per thread: drop ones past their age or broken, and note
            # this one before any query, so that the stopped server closes it even when the call
            # is refused.
            fit_connection()
            self.connections.remember()
            try:
                user = authenticate(header)
            except (OperationalError, InterfaceError):
                # The database is away (restart, cut connection): retryable, never UNKNOWN.
                context.abort_with_status(
                    refusal("database.unavailable", DATABASE_UNAVAILABLE_MESSAGE)
                )
            if user is None:
                context.abort_with_status(refusal("unauthenticated", UNAUTHENTICATED_MESSAGE))
            remaining = context.time_remaining()
            tokens = (
                current_user.set(user),
                request_id_var.set(request_id),
                deadline_at.set(server_deadline(remaining)),
            )
            try:
                result = behaviour(request, context)
                if isinstance(result, Drain):
                    return Drain(_with_vars(result.iterator, user, request_id))
                return result
            finally:
                current_user.reset(tokens[0])
                request_id_var.reset(tokens[1])
                deadline_at.reset(tokens[2])

        return around


def _with_vars(iterator: Iterator[Any], user: Any, request_id: str) -> Iterator[Any]:
    """Iterate a response stream with the call's user and request id set."""
    tokens = (current_user.set(user), request_id_var.set(request_id))
    try:
        yield from iterator
    finally:
        current_user.reset(tokens[0])
        request_id_var.reset(tokens[1])


def internal_status(method: str) -> status_pb2.Status:
    """The status of an unexpected error: INTERNAL, naming the method, nothing of the error."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"{method} failed: internal error")


class ErrorInterceptor(MethodInterceptor):
    """Errors of the catalog become statuses with details; anything else is INTERNAL, logged
    with the method name (the caller never sees a traceback or the error's message).

    ``field`` names the field a bad-input message on no field is reported under (the broker's
    ``spec``, the telemetry server's ``request``); ``server`` names the server in the log.
    """

    def __init__(self, *, field: str = "request", server: str = "gRPC") -> None:
        self.field = field
        self.server = server

    def around_method(self, details: grpc.HandlerCallDetails) -> Around:
        method = details.method

        def abort(context: grpc.ServicerContext, exc: Exception) -> None:
            status = rpc_status_for(exc, field=self.field)
            if status is None:
                logger.exception("%s RPC %s failed", self.server, method)
                status = internal_status(method)
            context.abort_with_status(rpc_status.to_status(status))

        def around(
            behaviour: Callable[..., Any], request: Any, context: grpc.ServicerContext
        ) -> Any:
            try:
                result = behaviour(request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                abort(context, exc)
                raise  # unreachable: abort raises
            if isinstance(result, Drain):
                return Drain(_mapped(result.iterator, context, abort))
            return result

        return around


def _is_abort(exc: Exception) -> bool:
    # grpc's context.abort() raises a bare ``Exception()`` after recording the status (our aio
    # call context raises AbortedCall); mapping it again would overwrite that status.
    return isinstance(exc, AbortedCall) or (type(exc) is Exception and not exc.args)


def _mapped(
    iterator: Iterator[Any],
    context: grpc.ServicerContext,
    abort: Callable[[grpc.ServicerContext, Exception], None],
) -> Iterator[Any]:
    try:
        yield from iterator
    except Exception as exc:
        if _is_abort(exc):
            raise
        abort(context, exc)
