"""One place that maps errors to HTTP answers for the whole REST API, from the error catalog
(``protos.errors``): the status is the entry's, the body says what went wrong and its reason."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, connection, transaction
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from protos.errors import Catalogued
from registry.errors import StaleVersion, field_messages, message_of, reason_of, spec_for


def validation_detail(exc: DjangoValidationError) -> dict[str, Any]:
    """Field messages of a Django ``ValidationError``; non-field ones under ``non_field_errors``."""
    return dict(field_messages(exc))


def error_body(exc: Exception) -> dict[str, Any]:
    """The JSON body of a catalogued error."""
    if isinstance(exc, DjangoValidationError):
        return validation_detail(exc)
    if isinstance(exc, DataError):
        return {"non_field_errors": [message_of(exc)]}
    if isinstance(exc, StaleVersion):
        return {"version": [str(exc)], "current_version": exc.current, "code": reason_of(exc)}
    spec = spec_for(exc)
    body: dict[str, Any] = {"detail": message_of(exc) or "Forbidden."}
    if spec is not None and spec.reason not in ("permission_denied", "not_found"):
        body["code"] = reason_of(exc)
    if spec is not None and spec.retryable:
        body["retryable"] = True
    if isinstance(exc, Catalogued):
        body.update(exc.extra())
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    spec = spec_for(exc)
    # Database outages are answered by DatabaseUnavailableMiddleware (with Retry-After).
    if spec is None or spec.reason == "database.unavailable":
        return drf_exception_handler(exc, context)
    if isinstance(exc, DataError) and connection.in_atomic_block:
        # The database refused a value a filter let through (e.g. a time-zone offset beyond
        # PostgreSQL's range): bad input, not a server error. Nothing was written. Inside an
        # atomic block (a caller's transaction) the block must roll back: it is unusable now.
        transaction.set_rollback(True)
    return Response(error_body(exc), status=spec.http)
