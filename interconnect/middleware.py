"""Web middleware of the project: request latency metrics."""

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from interconnect.metrics import HTTP_LATENCY


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
