"""One place that maps domain errors to HTTP answers for the whole REST API."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, connection, transaction
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from registry.errors import StaleVersion


def validation_detail(exc: DjangoValidationError) -> dict[str, Any]:
    """Field messages of a Django ``ValidationError``; non-field ones under ``non_field_errors``."""
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {"non_field_errors": exc.messages}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        return Response(validation_detail(exc), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, StaleVersion):
        return Response(
            {"version": [str(exc)], "current_version": exc.current}, status=status.HTTP_409_CONFLICT
        )
    if isinstance(exc, DataError):
        # The database refused a value a filter let through (e.g. a time-zone offset beyond
        # PostgreSQL's range): bad input, not a server error. Nothing was written. Inside an
        # atomic block (a caller's transaction) the block must roll back: it is unusable now.
        if connection.in_atomic_block:
            transaction.set_rollback(True)
        return Response(
            {"non_field_errors": ["A value is outside the range the database accepts."]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, DjangoPermissionDenied):
        return Response({"detail": str(exc) or "Forbidden."}, status=status.HTTP_403_FORBIDDEN)
    return drf_exception_handler(exc, context)
