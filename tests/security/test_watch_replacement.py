"""WatchBooking follows a replacement only into a booking the caller may see (through gRPC).

The host operator of a booking may watch it; when the broker moves the workload to another
operator's pool, the stream must not go on with the new booking: its pool ids and workload
messages belong to the firm and the new host, not to the first host.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from brokers import services
from brokers.client.client import BrokerClient
from brokers.rpc.server import BrokerRuntime, build_server
from registry import services as registry_services
from registry.choices import Door
from tests.brokers import conftest as broker_fixtures
from tests.brokers.conftest import spec

pytestmark = pytest.mark.django_db(transaction=True)

active_pool = broker_fixtures.active_pool  # the broker tests' fixture, used here too


@pytest.fixture(autouse=True)
def _no_dispatch(settings: Any) -> None:
    """No dispatch unless a test calls it; placement reads the database (no stale snapshot)."""
    from brokers.placement import catalog

    settings.BROKER_DISPATCH = False
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def _watch(broker: BrokerRuntime, user: Any, booking_id: str) -> list[Any]:
    _, token = registry_services.token_create(user=user, name="watch")
    with BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=10) as client:
        return list(client.watch(booking_id, timeout=20))


def test_the_first_host_does_not_stream_the_replacement_on_another_operators_pool(
    broker: BrokerRuntime,
    alice: Any,
    carol: Any,
    dave: Any,
    acme: Any,
    rival: Any,
    active_pool: Any,
) -> None:
    first = active_pool(acme, size=8, price="5.00")  # cheapest: booked first
    second = active_pool(rival, size=8, price="9.00")
    booking = services.booking_create(
        spec=spec(count=4, image="registry.example/secret-train:7", command="python secret.py"),
        idempotency_key="watch-1",
        actor=dave,
        door=Door.API,
    )
    assert [a.pool_id for a in booking.allocations.all()] == [first.pk]
    moved = services.booking_replace(
        booking=booking, exclude_center=first.center.national_id, reason="center went offline"
    )
    assert moved is not None and [a.pool_id for a in moved.allocations.all()] == [second.pk]
    services.booking_cancel(booking=moved, actor=dave, door=Door.API, reason="workload moved")

    seen_by_firm = _watch(broker, dave, booking.national_id)
    assert {e.booking_id for e in seen_by_firm} == {booking.national_id, moved.national_id}

    seen_by_first_host = _watch(broker, alice, booking.national_id)
    assert seen_by_first_host, "the host operator may watch its own booking"
    assert {e.booking_id for e in seen_by_first_host} == {booking.national_id}
    leaked = [e for e in seen_by_first_host if second.national_id in e.message]
    assert leaked == []

    # The new host watches the new booking, not the old one.
    assert {e.booking_id for e in _watch(broker, carol, moved.national_id)} == {moved.national_id}
