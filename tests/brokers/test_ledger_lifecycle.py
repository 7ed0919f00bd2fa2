"""The ledger follows a booking's whole life: a pool that shrinks, a workload that ends early,
a hold that is re-placed (issue 11, defects 3 to 5)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import transaction

from brokers import ledger, services
from brokers.choices import BookingStatus, EventKind
from brokers.errors import CapacityExhausted
from brokers.ledger import Part
from brokers.models import Booking, PoolSlot
from registry import services as registry_services
from registry.choices import Door, Status
from tests.brokers.conftest import next_hour, spec
from tests.conftest import force_status

pytestmark = pytest.mark.django_db

HOUR = dt.timedelta(hours=1)


def reserved(pool: Any) -> list[int]:
    return list(PoolSlot.objects.filter(pool=pool).values_list("reserved", flat=True))


def book_around_the_doors(actor: Any, pool: Any, *, n: int, start: dt.datetime, key: str) -> Any:
    """Book straight on the ledger, past the doors' checks (which refuse a start in the past):
    the ledger must hold whatever reaches it."""
    workload = spec(count=n, earliest_start=start)
    option = services.option_from_parts(spec=workload, parts=[(pool.national_id, n)], actor=actor)
    org = services._require_booker(actor)
    return ledger.in_fresh_transactions(
        lambda: services._book_option(
            org=org, actor=actor, door=Door.API, spec=workload, option=option, idempotency_key=key
        )
    )


def test_a_shrunk_pool_admits_no_more_than_its_size_on_an_old_window(
    dave: Any, alice: Any, acme: Any, active_pool: Any
) -> None:
    """Defect 3: slot rows of a past window keep the size the pool had when they were made; a
    pool shrunk and re-verified must not admit, there, more than its new size."""
    pool = active_pool(acme, size=16, per_node=8)
    past = next_hour() - 4 * HOUR
    # A past slot row exists (a booking there came and went).
    with transaction.atomic():
        ledger.reserve([Part(pool.pk, 4)], past, past + HOUR)
        ledger.release([Part(pool.pk, 4)], past, past + HOUR)
    force_status(pool, Status.DRAFT)  # hardware changes only outside verification
    registry_services.pool_update(pool=pool, actor=alice, door=Door.API, data={"nodes": 1})
    force_status(pool, Status.ACTIVE)  # re-verified at its new size
    assert set(PoolSlot.objects.filter(pool=pool).values_list("capacity", flat=True)) == {8}

    book_around_the_doors(dave, pool, n=8, start=past, key="a")
    with pytest.raises(CapacityExhausted):
        book_around_the_doors(dave, pool, n=8, start=past, key="b")
    assert reserved(pool) == [8, 8, 8, 8]
    assert ledger.oversold_pools() == {}


def test_past_slots_that_hold_more_than_the_new_size_do_not_block_a_shrink(
    dave: Any, alice: Any, acme: Any, active_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a past window held is history: it stays counted, and the pool may still shrink."""
    pool = active_pool(acme, size=16, per_node=8)
    start = next_hour()
    booking = services.booking_create(
        spec=spec(count=12, earliest_start=start), idempotency_key="a", actor=dave, door="api"
    )
    monkeypatch.setattr(services, "_now", lambda: start + 2 * HOUR)
    services.booking_record(
        booking=booking,
        kind=EventKind.STATUS,
        message="finished",
        to=BookingStatus.FINISHED,
        allowed_from={BookingStatus.CONFIRMED},
    )
    services.pool_capacity_sync(pool_id=pool.pk, capacity=8)
    rows = PoolSlot.objects.filter(pool=pool).values_list("reserved", "capacity")
    assert list(rows) == [(12, 12)] * 4


@pytest.mark.parametrize(
    "ending",
    [BookingStatus.FINISHED, BookingStatus.FAILED, "stopped"],
)
def test_a_workload_that_ends_early_gives_back_the_rest_of_its_window(
    ending: str, dave: Any, acme: Any, active_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 4: a booking that finishes, fails or is stopped 20 minutes into its hour gives
    back its slots from that instant on (the slot it ends in included), never the past ones,
    and only once."""
    pool = active_pool(acme, size=8)
    start = next_hour()
    booking = services.booking_create(
        spec=spec(count=4, earliest_start=start), idempotency_key="a", actor=dave, door="api"
    )
    monkeypatch.setattr(services, "_now", lambda: start + dt.timedelta(minutes=20))
    for to, allowed in (
        (BookingStatus.DISPATCHING, {BookingStatus.CONFIRMED}),
        (BookingStatus.RUNNING, {BookingStatus.DISPATCHING}),
    ):
        assert services.booking_record(
            booking=booking, kind=EventKind.STATUS, message=to, to=to, allowed_from=allowed
        )
    for _ in range(2):  # the second report loses the compare-and-set: released once
        if ending == "stopped":
            services.booking_cancel(booking=booking, actor=dave, door="api")
        else:
            services.booking_record(
                booking=booking,
                kind=EventKind.STATUS,
                message=f"the workload {ending}",
                to=ending,
                allowed_from={BookingStatus.DISPATCHING, BookingStatus.RUNNING},
            )
    assert reserved(pool) == [4, 0, 0, 0]
    # The rest of the window is bookable in full again.
    services.booking_create(
        spec=spec(
            count=8,
            earliest_start=start + dt.timedelta(minutes=20),
            duration=dt.timedelta(minutes=40),
        ),
        idempotency_key="b",
        actor=dave,
        door="api",
    )
    assert reserved(pool) == [4, 8, 8, 8]


def test_an_ended_booking_is_never_revived_into_holding_capacity(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    pool = active_pool(acme, size=8)
    booking = services.booking_create(
        spec=spec(count=4), idempotency_key="a", actor=dave, door="api"
    )
    services.booking_cancel(booking=booking, actor=dave, door="api")
    assert not services.booking_record(
        booking=booking,
        kind=EventKind.STATUS,
        message="running",
        to=BookingStatus.RUNNING,
        allowed_from={BookingStatus.CANCELLED},
    )
    booking.refresh_from_db()
    assert booking.status == BookingStatus.CANCELLED and reserved(pool) == [0, 0, 0, 0]


def test_a_held_booking_stays_held_with_its_expiry_when_replaced(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """Defect 5: the firm never confirmed it, so the booking that replaces a hold is a hold,
    lapsing when the first one would have."""
    first = active_pool(acme, size=8, price="5.00")
    other = active_pool(acme, size=8, price="9.00")
    held = services.booking_create(
        spec=spec(count=8), idempotency_key="h", actor=dave, door="api", hold=True
    )
    assert held.allocations.get().pool_id == first.pk
    new = services.booking_replace(
        booking=held, exclude_center=first.center.national_id, reason="center offline"
    )
    assert new is not None and new.allocations.get().pool_id == other.pk
    new.refresh_from_db()
    held.refresh_from_db()
    assert new.status == BookingStatus.HELD
    assert new.hold_expires_at == held.hold_expires_at
    assert held.status == BookingStatus.REPLACED
    assert reserved(first) == [0, 0, 0, 0] and reserved(other) == [8, 8, 8, 8]
    # It lapses like the first one would have, and gives its capacity back.
    Booking.objects.filter(pk=new.pk).update(hold_expires_at=new.created_at)
    assert services.bookings_expire_holds() == 1
    assert reserved(other) == [0, 0, 0, 0]
