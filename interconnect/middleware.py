"""Web middleware of the project: request latency metrics, database unavailability as 503."""

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from interconnect.metrics import HTTP_LATENCY
from registry.errors import message_of, spec_for


class MetricsMiddleware:
    """Observe each request's latency under its route pattern (not the raw path: bounded labels)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        HTTP_LATENCY.labels(request.method, route, f"{response.status_code // 100}xx").observe(
            time.perf_counter() - start
        )
        return response


# Seconds a client should wait before retrying while the database is away (a restart takes a few).
DATABASE_RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware:
    """Answer 503 with ``Retry-After`` when a view fails because the database is unreachable.

    During a PostgreSQL restart or a cut connection, psycopg raises ``OperationalError`` (or
    ``InterfaceError`` on a connection already closed). Without this, Django answers 500: a bug
    to the client, and not retryable. A 503 says "try again", which is the truth: the request
    changed nothing (its transaction never committed). Serialization failures and deadlocks are
    ``OperationalError`` too, and retrying is also the right answer for them.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        spec = spec_for(exception)
        if spec is None or spec.reason != "database.unavailable":
            return None
        logging.getLogger("interconnect.db").warning(
            "database unavailable: %s %s: %s", request.method, request.path, exception
        )
        return JsonResponse(
            {"detail": message_of(exception)},
            status=spec.http,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
