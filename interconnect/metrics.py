"""Prometheus metrics of web, broker and workers.

Each process exposes its own registry: the web at ``/metrics``, the broker and workers on
``METRICS_PORT`` when set (``start_metrics_server``). Under gunicorn with several workers set
``PROMETHEUS_MULTIPROC_DIR`` and the web view aggregates them (prometheus_client multiprocess
mode). Metric names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms.
"""

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

HTTP_LATENCY = Histogram(
    "interconnect_http_request_duration_seconds",
    "Web request latency by route and status class.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GRPC_LATENCY = Histogram(
    "interconnect_grpc_request_duration_seconds",
    "gRPC broker call latency by method and status code.",
    ["method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
BOOKINGS = Counter("interconnect_bookings_total", "Bookings accepted, by door.", ["door"])
BOOKING_REFUSALS = Counter(
    "interconnect_booking_refusals_total",
    "Bookings refused, by reason (capacity, quota, invalid, conflict).",
    ["reason"],
)
VERIFICATION_VERDICTS = Counter(
    "interconnect_verification_verdicts_total",
    "Verification runs finished, by verdict (passed, failed, error).",
    ["verdict"],
)
HEARTBEATS = Counter("interconnect_heartbeats_total", "Heartbeats received from agents.")
WEBHOOK_DELIVERIES = Counter(
    "interconnect_webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["outcome"]
)


class _LazyGauges:
    """Gauges computed at scrape time from the database and the queue (no background thread).

    ``sources`` maps a metric name to (help, function returning a float or None); apps register
    theirs with ``register_gauge`` so that this module imports none of them.
    """

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], float | None]]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, fn) in self.sources.items():
            try:
                value = fn()
            except Exception:  # a scrape must never fail because one source is down
                value = None
            if value is not None:
                family = GaugeMetricFamily(name, help_text)
                family.add_metric([], float(value))
                yield family

    def describe(self) -> list[Any]:
        return []


LAZY = _LazyGauges()


def register_gauge(name: str, help_text: str, fn: Callable[[], float | None]) -> None:
    LAZY.sources[name] = (help_text, fn)


def render_latest() -> tuple[bytes, str]:
    """The exposition text of this process (or of all processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(LAZY)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def start_metrics_server() -> int | None:
    """Expose this process's metrics on ``METRICS_PORT`` (broker, workers); returns the port."""
    port = int(os.environ.get("METRICS_PORT", "0") or 0)
    if not port:
        return None
    start_http_server(port, addr=os.environ.get("METRICS_ADDR", "127.0.0.1"))
    return port


def _install_lazy() -> None:
    from prometheus_client import REGISTRY

    try:
        REGISTRY.register(LAZY)
    except ValueError:  # already registered (module reloaded in tests)
        pass


_install_lazy()


def _celery_queue_depth() -> float | None:
    """Messages waiting in the default Celery queue (Redis list length), if on Redis."""
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis"):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=0.5)
    return float(client.llen("celery"))


register_gauge(
    "interconnect_celery_queue_depth",
    "Tasks waiting in the default Celery queue.",
    _celery_queue_depth,
)
