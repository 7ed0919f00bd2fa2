"""The error catalog: how every error the platform answers with looks at every door.

Each entry is declared once: its HTTP status (REST API, portal), its gRPC status (broker,
telemetry server, agent), its reason code (``code`` in a REST body, ``ErrorInfo.reason`` in a
gRPC status's details) and the exit status of the ``interconnect`` command line. Domain error
classes point at their entry (``spec = ERRORS["version.stale"]``); Django's own exceptions are
mapped in ``registry.errors``; the doors read the entry, never a table of their own
(``tests/ops/test_error_catalog.py`` raises every entry through every door).

This module imports neither Django nor the database: the agent and the command line read it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

# gRPC ErrorInfo.domain of every status the platform's servers send.
DOMAIN = "interconnect.broker.v1"

# Exit statuses of the command line (sysexits-like: 75 is "temporary failure, try again").
# 1: the server refused the request as it stands (bad input, a state that does not allow it) or
# failed; 2 is the command line's own usage error (an argument it refuses before any call).
EXIT_REFUSED = 1
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_NOT_FOUND = 4
EXIT_EXHAUSTED = 5
EXIT_STALE = 6
EXIT_RETRY = 75


@dataclass(frozen=True)
class ErrorSpec:
    """One catalog entry."""

    reason: str
    http: int
    grpc_code: grpc.StatusCode
    exit: int
    # A retry of the same request (same idempotency key) may succeed and is safe.
    retryable: bool = False


def _entries(*specs: ErrorSpec) -> dict[str, ErrorSpec]:
    return {spec.reason: spec for spec in specs}


S = grpc.StatusCode
ERRORS: dict[str, ErrorSpec] = _entries(
    # Bad input: field messages (HTTP 400 body, gRPC BadRequest field violations).
    ErrorSpec("invalid", 400, S.INVALID_ARGUMENT, EXIT_REFUSED),
    ErrorSpec("unauthenticated", 401, S.UNAUTHENTICATED, EXIT_DENIED),
    ErrorSpec("permission_denied", 403, S.PERMISSION_DENIED, EXIT_DENIED),
    # Not there, or not the caller's to see (a tenant never learns a foreign object exists).
    ErrorSpec("not_found", 404, S.NOT_FOUND, EXIT_NOT_FOUND),
    # The object changed since the client read it: read it again before changing it (the same
    # request again fails the same way).
    ErrorSpec("version.stale", 409, S.ABORTED, EXIT_STALE),
    # A concurrent writer won and the server's retries ran out: retry with the same key.
    ErrorSpec("booking.conflict", 409, S.ABORTED, EXIT_RETRY, retryable=True),
    # Not enough free capacity, or a quota refuses (the instance's code says which).
    ErrorSpec("booking.capacity_exceeded", 409, S.RESOURCE_EXHAUSTED, EXIT_EXHAUSTED),
    # The caller's deadline ran out inside the ledger; nothing was written.
    ErrorSpec("deadline_exceeded", 503, S.DEADLINE_EXCEEDED, EXIT_RETRY, retryable=True),
    # PostgreSQL restarting or a connection cut: the transaction did not commit.
    ErrorSpec("database.unavailable", 503, S.UNAVAILABLE, EXIT_RETRY, retryable=True),
    # The agent cannot serve right now (transient).
    ErrorSpec("unavailable", 503, S.UNAVAILABLE, EXIT_RETRY, retryable=True),
    # Valid, but the state does not allow it (yet or any more).
    ErrorSpec("failed_precondition", 409, S.FAILED_PRECONDITION, EXIT_REFUSED),
    # The platform is not set up to do this (no certificate authority configured): asking
    # again does not help until an operator configures it.
    ErrorSpec("certificates.no_authority", 503, S.FAILED_PRECONDITION, EXIT_REFUSED),
    # An idempotency key already used for another request (422 as the IETF draft on the
    # Idempotency-Key header says for a key reused with another payload).
    ErrorSpec("booking.idempotency_key_reused", 422, S.FAILED_PRECONDITION, EXIT_REFUSED),
    # More memory or time than a limit allows.
    ErrorSpec("resource_exhausted", 429, S.RESOURCE_EXHAUSTED, EXIT_EXHAUSTED),
    # Anything unexpected: logged with the method, never a traceback to the caller.
    ErrorSpec("internal", 500, S.INTERNAL, EXIT_INTERNAL),
)
del S


class Catalogued:
    """Mixin of a domain error class: ``spec`` names its catalog entry."""

    spec: ClassVar[ErrorSpec]

    @property
    def reason(self) -> str:
        """The reason code of this error (an instance may be more precise than its class)."""
        return self.spec.reason

    def extra(self) -> dict[str, object]:
        """Fields a REST body carries besides ``detail`` and ``code`` (none by default)."""
        return {}


def reason_status(spec: ErrorSpec, reason: str, message: str) -> status_pb2.Status:
    """The google.rpc.Status of an entry: its gRPC code, the message, an ErrorInfo with the
    reason code (``reason``: the entry's, or an instance's more precise one)."""
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    return status_pb2.Status(code=spec.grpc_code.value[0], message=message[:1000], details=[packed])


def exit_status(code: grpc.StatusCode, reason: str = "") -> int:
    """The command line's exit status for a gRPC status and its ErrorInfo reason (if any).

    A known reason decides; a refined reason (``quota.max_concurrent_accelerators``) falls back
    to the entry whose gRPC status matches; an unknown status is an internal error.
    """
    if reason in ERRORS:
        return ERRORS[reason].exit
    for spec in ERRORS.values():
        if spec.grpc_code == code:
            return spec.exit
    return EXIT_INTERNAL
