"""Prometheus metrics of web, broker, telemetry and workers.

Each process exposes its metrics: the web at ``/metrics``, the broker, the Telemetry server and
Celery workers on ``METRICS_PORT`` when set (``start_metrics_server``, called where those
processes start: ``run_broker``, ``run_telemetry``, Celery's ``worker_init``). Under gunicorn
with several workers set ``PROMETHEUS_MULTIPROC_DIR`` and the web view aggregates them
(prometheus_client multiprocess mode). A process that serves ``METRICS_PORT`` and forks (the
broker's ``--processes N`` children, Celery's prefork pool) needs the same mode, or its port
would show only the parent's counters, which records nothing: when ``METRICS_PORT`` is set and
``PROMETHEUS_MULTIPROC_DIR`` is not, this module points it at a fresh private directory before
``prometheus_client`` is imported, and the port serves the sum over the process and its
children. Metric names follow Prometheus conventions: ``_total`` counters, ``_seconds``
histograms.
"""

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from typing import Any, TypeVar


def _private_multiprocess_dir() -> None:
    """Multiprocess mode for a process serving ``METRICS_PORT`` (see the module docstring).

    Must run before ``prometheus_client`` is first imported: the mode is chosen at its import.
    """
    if not os.environ.get("METRICS_PORT") or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    if "prometheus_client" in sys.modules:
        return  # too late to switch; the port serves this process's own metrics
    path = tempfile.mkdtemp(prefix="interconnect-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in forked children, whose exit runs atexit too
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


_private_multiprocess_dir()

from prometheus_client import (  # noqa: E402 (after the multiprocess switch above)
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

HTTP_LATENCY = Histogram(
    "interconnect_http_request_duration_seconds",
    "Web request latency by route and status class.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GRPC_LATENCY = Histogram(
    "interconnect_grpc_request_duration_seconds",
    "gRPC call latency (broker, telemetry) by method and status code.",
    ["method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


def observe_grpc_call(method: str, code: str, seconds: float) -> None:
    """Record one gRPC call (the servers' ``rpckit.interceptors.MetricsInterceptor``)."""
    GRPC_LATENCY.labels(method=method, code=code).observe(seconds)


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


class _ServedCollector:
    """What ``METRICS_PORT`` serves: this process (or all its processes in multiprocess mode)
    and the lazy gauges; the database connection a scrape opened in its server thread is closed
    after the scrape (Django's connections are per thread, and each scrape is a new thread)."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY

        self.inner: list[Any] = [REGISTRY]
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.inner = [multiprocess.MultiProcessCollector(None), LAZY]

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from django.db import connections

        try:
            for collector in self.inner:
                yield from collector.collect()
        finally:
            connections.close_all()


def start_metrics_server() -> int | None:
    """Serve this process's metrics on ``METRICS_PORT`` (``METRICS_ADDR``, default loopback) in
    a daemon thread; returns the port, or None when ``METRICS_PORT`` is unset.

    Call it in the process that lives as long as the service (the broker's or the worker's
    parent): in multiprocess mode it also serves the counters of the children it forks.
    """
    port = int(os.environ.get("METRICS_PORT", "0") or 0)
    if not port:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServedCollector())
    start_http_server(port, addr=os.environ.get("METRICS_ADDR", "127.0.0.1"), registry=registry)
    return port


F = TypeVar("F", bound=Callable[..., Any])


def refusals_counted(reasons: Sequence[tuple[type[BaseException], str]]) -> Callable[[F], F]:
    """Count in ``interconnect_booking_refusals_total`` each exception leaving the decorated
    function, labelled by the first ``(exception class, reason)`` it is an instance of;
    exceptions of no listed class are not refusals (a bug, a lost database) and not counted."""

    def decorate(fn: F) -> F:
        @wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                for kind, reason in reasons:
                    if isinstance(exc, kind):
                        BOOKING_REFUSALS.labels(reason=reason).inc()
                        break
                raise

        return counted  # type: ignore[return-value]

    return decorate


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
