"""Liveness and readiness probes for the web process."""

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from interconnect.metrics import render_latest


def liveness(request: HttpRequest) -> JsonResponse:
    """The process answers."""
    return JsonResponse({"status": "ok"})


def readiness(request: HttpRequest) -> JsonResponse:
    """The process can reach its database."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database error means "not ready"
        return JsonResponse({"status": "unavailable", "error": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok"})


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this web process (all processes in multiprocess mode)."""
    body, content_type = render_latest()
    return HttpResponse(body, content_type=content_type)
