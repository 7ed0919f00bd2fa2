"""Domain errors of the registry, and the doors' one lookup into the error catalog.

Every error class that reaches a door names its entry of ``protos.errors.ERRORS`` (HTTP status,
gRPC status, reason code, CLI exit status); Django's own exceptions are mapped here, once.
``spec_for`` is what the REST exception handler, the portal, the broker's interceptor and the
telemetry server ask; ``rpc_status_for`` builds the gRPC status both gRPC servers send.
"""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import DataError, InterfaceError, OperationalError
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from protos.errors import ERRORS, Catalogued, ErrorSpec, reason_status


class StaleVersion(Catalogued, Exception):
    """The client changed an object from an outdated version (HTTP 409, gRPC ABORTED)."""

    spec = ERRORS["version.stale"]

    def __init__(self, current: int) -> None:
        super().__init__(f"The object changed meanwhile; current version is {current}.")
        self.current = current


class NoCertificateAuthority(Catalogued, Exception):
    """This platform issues no agent certificates: no certificate authority is configured
    (HTTP 503, gRPC FAILED_PRECONDITION; docs/tls.md says how to configure one)."""

    spec = ERRORS["certificates.no_authority"]

    def __init__(self) -> None:
        super().__init__("This platform issues no certificates (no authority configured).")


class IllegalTransition(ValidationError):
    """A lifecycle move that the transition table or the actor's role does not allow.

    A ``ValidationError`` on the ``status`` field, so every door answers it as bad input.
    """

    def __init__(self, message: str) -> None:
        super().__init__({"status": [message]})


class ResubmitTooSoon(IllegalTransition):
    """A pool that failed verification is submitted again before its cool-down ended
    (``registry.selectors.resubmit_cooldown``): bad input on ``status`` at every door, saying
    when it may be submitted."""

    def __init__(self, message: str, allowed_at: dt.datetime) -> None:
        super().__init__(message)
        self.allowed_at = allowed_at


# Django's exceptions, most specific first (a DataError is a DatabaseError, as is an
# OperationalError: the order decides).
BUILTIN_ERRORS: tuple[tuple[type[BaseException], ErrorSpec], ...] = (
    (ValidationError, ERRORS["invalid"]),
    # A value the database refuses (NUL in text, an offset beyond its range): bad input.
    (DataError, ERRORS["invalid"]),
    (ObjectDoesNotExist, ERRORS["not_found"]),
    (PermissionDenied, ERRORS["permission_denied"]),
    (OperationalError, ERRORS["database.unavailable"]),
    (InterfaceError, ERRORS["database.unavailable"]),
)

DATA_ERROR_MESSAGE = "A value is outside the range the database accepts."
DATABASE_UNAVAILABLE_MESSAGE = "The database is unavailable; retry later."


def spec_for(exc: BaseException) -> ErrorSpec | None:
    """The catalog entry of an error, or None for an unexpected one (a server error)."""
    if isinstance(exc, Catalogued):
        return exc.spec
    for cls, spec in BUILTIN_ERRORS:
        if isinstance(exc, cls):
            return spec
    return None


def reason_of(exc: BaseException) -> str:
    """The reason code: the instance's own when it has one (``CapacityExhausted.code``)."""
    if isinstance(exc, Catalogued):
        return exc.reason
    spec = spec_for(exc)
    return spec.reason if spec else ERRORS["internal"].reason


def message_of(exc: BaseException) -> str:
    """The human sentence every door shows for an error."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{field}: {' '.join(m)}" for field, m in field_messages(exc).items())
    if isinstance(exc, DataError):
        return DATA_ERROR_MESSAGE
    if isinstance(exc, OperationalError | InterfaceError):
        return DATABASE_UNAVAILABLE_MESSAGE
    if isinstance(exc, ObjectDoesNotExist):
        return "Not found."  # never the model's name: a tenant learns nothing of others' objects
    if isinstance(exc, PermissionDenied):
        return str(exc) or "Not allowed."
    return str(exc)


def portal_error(exc: BaseException, what: str) -> str:
    """The portal's message for an error of the catalog: what failed, why, and whether booking
    (or saving) again is safe."""
    spec = spec_for(exc)
    retry = " It is safe to try again." if spec is not None and spec.retryable else ""
    return f"{what}: {message_of(exc)}{retry}"


def field_messages(
    exc: ValidationError, default_field: str = "non_field_errors"
) -> dict[str, list[str]]:
    """Field messages of a ``ValidationError``; messages on no field under ``default_field``."""
    if hasattr(exc, "error_dict"):
        return {
            (default_field if field == "__all__" else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {default_field: exc.messages}


def rpc_status_for(exc: BaseException, *, field: str = "request") -> status_pb2.Status | None:
    """The google.rpc.Status for an error (None for an unexpected one): bad input with its
    field violations (``field`` names messages that belong to no field), anything else with an
    ErrorInfo carrying its reason code."""
    spec = spec_for(exc)
    if spec is None:
        return None
    if not isinstance(exc, ValidationError):
        return reason_status(spec, reason_of(exc), message_of(exc))
    violations = field_messages(exc, default_field=field)
    detail = error_details_pb2.BadRequest()
    for name, messages in violations.items():
        for text in messages:
            detail.field_violations.add(field=name, description=text)
    packed = any_pb2.Any()
    packed.Pack(detail)
    message = "; ".join(f"{k}: {m}" for k, ms in violations.items() for m in ms)
    return status_pb2.Status(code=spec.grpc_code.value[0], message=message[:1000], details=[packed])
