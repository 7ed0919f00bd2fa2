"""Fixtures of the broker's tests: active pools, specs, and a firm's booking helpers.

The gRPC broker, Celery worker and agents are real (see ``broker_testing``); these fixtures
only build database state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from brokers.placement import WorkloadSpec
from registry.models import Cluster
from tests.factories import CenterFactory, PoolFactory


def next_hour() -> dt.datetime:
    now = timezone.now()
    return now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)


@pytest.fixture
def active_pool() -> Callable[..., Any]:
    """An active pool (in an active center) of ``operator``: ``size`` A100s by default."""

    def make(
        operator: Any,
        *,
        size: int = 8,
        per_node: int = 8,
        cluster: str = "ZW",
        price: str = "10.00",
        green: float = 0.6,
        center: Any = None,
        **kwargs: Any,
    ) -> Any:
        if center is None:
            center = CenterFactory(
                operator=operator,
                cluster=Cluster.objects.get(code=cluster),
                green_power_share=green,
                status="active",
            )
        return PoolFactory(
            center=center,
            nodes=max(1, size // per_node),
            accelerators_per_node=min(per_node, size),
            price_per_accelerator_hour=price,
            status="active",
            **kwargs,
        )

    return make


def spec(**kwargs: Any) -> WorkloadSpec:
    """An A100 workload of 4 accelerators for one hour from the next full hour."""
    values: dict[str, Any] = {
        "accelerator_model": "nvidia-a100-80g",
        "count": 4,
        "earliest_start": next_hour(),
        "duration": dt.timedelta(hours=1),
    }
    values.update(kwargs)
    return WorkloadSpec(**values)


@pytest.fixture(autouse=True)
def _no_dispatch_unless_asked(settings: Any, request: pytest.FixtureRequest) -> None:
    """Bookings enqueue dispatch only in tests that run a Celery worker (marked ``dispatch``).

    Placement asks the database directly (no pool snapshot) unless a test turns the snapshot
    on: pools made by one test must not linger in the next one's candidates.
    """
    from brokers.placement import catalog

    settings.BROKER_DISPATCH = request.node.get_closest_marker("dispatch") is not None
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()
