"""The two booking writers write the same rows (PostgreSQL).

A reserved booking of a firm without a quota is written on PostgreSQL by ``broker_book`` (one
round trip, ``brokers.booking_sql``); every other booking, and every booking on SQLite or with
``BROKER_BOOK_FUNCTION=0``, by ``services._book_option`` (the ORM and ``ledger.reserve``). Both
stay because neither can take the other's place without a loss: the function cannot hold the
quota rules, spot and priority classes, preemption or a re-placed hold's expiry (they are
Python, under the quota row's lock), and the Python path costs about ten round trips per
booking where the function costs one (docs/broker-speed.md).

So each case here runs twice from the same state, each time in a savepoint rolled back after:
once through the function, once through the Python path, and the two must leave the same
rows behind (booking, allocations, event, webhook deliveries, slot counters) or refuse with
the same reason code and write nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from brokers import booking_sql, services
from brokers.errors import CapacityExhausted, IdempotencyKeyReused
from brokers.models import Allocation, Booking, BookingEvent, PoolSlot
from registry import selectors as registry_selectors
from registry.choices import Status
from registry.models import Pool, WebhookDelivery, WebhookSubscription
from tests.brokers.conftest import next_hour, spec

pytestmark = pytest.mark.django_db


def state() -> dict[str, Any]:
    """Every row a booking writes, without ids, random national ids and clock readings."""
    bookings = []
    for b in Booking.objects.order_by("pk"):
        bookings.append(
            {
                "organization": b.organization_id,
                "created_by": b.created_by_id,
                "door": b.door,
                "idempotency_key": b.idempotency_key,
                "request_fingerprint": b.request_fingerprint,
                "spec": b.spec,
                "status": b.status,
                "status_reason": b.status_reason,
                "window": (b.window_start, b.window_end),
                "accelerators": b.accelerators,
                "estimated_cost": b.estimated_cost,
                "currency": b.currency,
                "booking_class": b.booking_class_id,
                "replace_on_preemption": b.replace_on_preemption,
                "flagged_reason": b.flagged_reason,
                "replaced_by": b.replaced_by_id,
                # Held for BROKER_HOLD_SECONDS from the moment of booking, by the database clock.
                "held_seconds": None
                if b.hold_expires_at is None
                else round((b.hold_expires_at - b.created_at).total_seconds()),
                "allocations": [
                    (
                        a.pool_id,
                        a.accelerators,
                        a.start,
                        a.end,
                        a.price_per_accelerator_hour,
                        a.workload_id,
                        a.workload_state,
                    )
                    for a in Allocation.objects.filter(booking=b).order_by("pk")
                ],
                "events": [
                    (e.kind, e.status, e.message, e.data)
                    for e in BookingEvent.objects.filter(booking=b).order_by("pk")
                ],
            }
        )
    deliveries = [
        (
            d.subscription_id,
            d.event,
            {k: v for k, v in d.payload.items() if k != "time"}
            | {"data": {k: v for k, v in d.payload["data"].items() if k != "booking"}},
            d.state,
            d.attempts,
        )
        for d in WebhookDelivery.objects.order_by("pk")
    ]
    slots = sorted(
        PoolSlot.objects.values_list(
            "pool_id", "slot_start", "capacity", "reserved", "spot_reserved"
        )
    )
    return {"bookings": bookings, "deliveries": deliveries, "slots": slots}


def outcome(action: Callable[[], Any]) -> tuple[str, dict[str, Any]]:
    """What ``action`` answered (``ok`` or the refusal's code) and the rows it left, rolled back
    afterwards."""
    # A savepoint, not an atomic block: the services' durable blocks nest only in the test's.
    savepoint = transaction.savepoint()
    try:
        try:
            action()
            answer = "ok"
        except (CapacityExhausted, IdempotencyKeyReused, ValidationError) as exc:
            answer = getattr(exc, "code", None) or type(exc).__name__
        rows = state()
    finally:
        transaction.savepoint_rollback(savepoint)
    return answer, rows


def both_ways(settings: Any, action: Callable[[], Any], monkeypatch: Any) -> None:
    """``action`` through the function, then through the Python path: the same answer and the
    same rows. The function's path must really have been taken the first time."""
    calls: list[int] = []
    real = booking_sql.book

    def counted(request: booking_sql.Request, **kwargs: Any) -> booking_sql.Booked:
        calls.append(1)
        return real(request, **kwargs)

    monkeypatch.setattr(booking_sql, "book", counted)
    settings.BROKER_BOOK_FUNCTION = True
    fast = outcome(action)
    assert calls, "the function was not called"
    settings.BROKER_BOOK_FUNCTION = False
    calls.clear()
    slow = outcome(action)
    assert not calls, "the Python path called the function"
    assert fast == slow


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("broker_book exists on PostgreSQL only")


@pytest.fixture
def pools(acme: Any, active_pool: Any) -> list[Pool]:
    made = [active_pool(acme, size=8, price="10.00"), active_pool(acme, size=8, price="12.50")]
    # Part of the window is booked already: the counters add up from there.
    start = next_hour()
    for i in range(2):
        PoolSlot.objects.create(
            pool=made[0],
            slot_start=start + dt.timedelta(minutes=15 * i),
            capacity=8,
            reserved=3,
        )
    return made


@pytest.fixture
def subscribed(dave: Any) -> None:
    org = registry_selectors.organization_of(dave)
    WebhookSubscription.objects.create(organization=org, url="https://example.org/all")
    WebhookSubscription.objects.create(
        organization=org, url="https://example.org/placed", events=["booking.placed"]
    )
    WebhookSubscription.objects.create(
        organization=org, url="https://example.org/other", events=["booking.finished"]
    )


def test_a_booking_from_a_specification(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool], subscribed: None
) -> None:
    both_ways(
        settings,
        lambda: services.booking_create(
            spec=spec(count=4), idempotency_key="k", actor=dave, door="api"
        ),
        monkeypatch,
    )


def test_a_held_booking_on_a_chosen_option_of_two_pools(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool], subscribed: None
) -> None:
    option = [(pools[0].national_id, 5), (pools[1].national_id, 3)]
    both_ways(
        settings,
        lambda: services.booking_create(
            spec=spec(count=8, allow_split=True, max_centers=2),
            option=option,
            hold=True,
            idempotency_key="k",
            actor=dave,
            door="grpc",
        ),
        monkeypatch,
    )


def test_a_request_beyond_the_free_capacity_is_refused_alike(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool]
) -> None:
    # 3 of 8 are booked over the first half hour of pools[0]: 6 do not fit.
    option = [(pools[0].national_id, 6)]
    both_ways(
        settings,
        lambda: services.booking_create(
            spec=spec(count=6), option=option, idempotency_key="k", actor=dave, door="api"
        ),
        monkeypatch,
    )


def test_a_pool_gone_offline_is_refused_alike(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool]
) -> None:
    Pool.objects.filter(pk=pools[1].pk).update(status=Status.DEGRADED)
    option = [(pools[1].national_id, 2)]
    both_ways(
        settings,
        lambda: services.booking_create(
            spec=spec(count=2), option=option, idempotency_key="k", actor=dave, door="api"
        ),
        monkeypatch,
    )


def test_a_repeated_key_answers_alike(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool], subscribed: None
) -> None:
    def twice() -> None:
        first = services.booking_create(
            spec=spec(count=2), idempotency_key="k", actor=dave, door="api"
        )
        again = services.booking_create(
            spec=spec(count=2), idempotency_key="k", actor=dave, door="api"
        )
        assert again.pk == first.pk
        # The same key for another request.
        services.booking_create(spec=spec(count=3), idempotency_key="k", actor=dave, door="api")

    both_ways(settings, twice, monkeypatch)


def test_the_comparison_sees_a_difference(
    settings: Any, monkeypatch: Any, dave: Any, pools: list[Pool]
) -> None:
    """Control: a Python path that prices the booking differently is caught."""
    real = services._book_option

    def cheaper(**kwargs: Any) -> Booking:
        booking = real(**kwargs)
        Booking.objects.filter(pk=booking.pk).update(estimated_cost=Decimal("0.01"))
        return booking

    monkeypatch.setattr(services, "_book_option", cheaper)
    with pytest.raises(AssertionError):
        both_ways(
            settings,
            lambda: services.booking_create(
                spec=spec(count=4), idempotency_key="k", actor=dave, door="api"
            ),
            monkeypatch,
        )
