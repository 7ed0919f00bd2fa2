"""The booking ledger never reserves a pool beyond its capacity, and says why it refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from brokers import ledger, services
from brokers.choices import BookingStatus, EventKind
from brokers.errors import CapacityExhausted, QuotaExceeded
from brokers.models import Allocation, Booking, PoolSlot
from registry import services as registry_services
from registry.choices import Door, Status
from tests.brokers.conftest import spec

pytestmark = pytest.mark.django_db


def reserved(pool: Any) -> list[int]:
    return list(PoolSlot.objects.filter(pool=pool).values_list("reserved", flat=True))


def test_windows_are_rounded_outward_to_whole_slots() -> None:
    start = dt.datetime(2026, 11, 23, 10, 7, tzinfo=dt.UTC)
    first, last = ledger.slot_bounds(start, start + dt.timedelta(minutes=20))
    assert (first.minute, last.minute) == (0, 30)
    assert len(ledger.slot_starts(start, start + dt.timedelta(minutes=20))) == 2


def test_the_server_deadline_keeps_a_margin_of_at_most_a_quarter(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker gives up ``BROKER_DEADLINE_MARGIN_SECONDS`` before its caller, at most a
    quarter of the remaining time (a short deadline keeps most of its time)."""
    monkeypatch.setattr(ledger.time, "monotonic", lambda: 100.0)
    settings.BROKER_DEADLINE_MARGIN_SECONDS = 0.1
    assert ledger.server_deadline(None) is None
    assert ledger.server_deadline(2.0) == pytest.approx(101.9)
    assert ledger.server_deadline(0.2) == pytest.approx(100.15)
    settings.BROKER_DEADLINE_MARGIN_SECONDS = 0.0
    assert ledger.server_deadline(2.0) == pytest.approx(102.0)


def test_a_booking_reserves_every_slot_of_its_window(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    pool = active_pool(acme, size=8)
    booking = services.booking_create(
        spec=spec(count=4), idempotency_key="k1", actor=dave, door=Door.API
    )
    assert booking.status == BookingStatus.CONFIRMED
    assert booking.national_id.startswith("BK-")
    assert [(a.pool_id, a.accelerators) for a in booking.allocations.all()] == [(pool.pk, 4)]
    assert reserved(pool) == [4, 4, 4, 4]
    assert booking.events.first().kind == EventKind.CREATED


def test_it_refuses_beyond_capacity_and_cancel_gives_it_back(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    pool = active_pool(acme, size=8)
    first = services.booking_create(spec=spec(count=8), idempotency_key="a", actor=dave, door="api")
    with pytest.raises(CapacityExhausted) as refused:
        services.booking_create(spec=spec(count=1), idempotency_key="b", actor=dave, door="api")
    assert refused.value.code == "booking.no_placement"
    assert "capacity.insufficient" in refused.value.detail
    services.booking_cancel(booking=first, actor=dave, door="api")
    services.booking_cancel(booking=first, actor=dave, door="api")  # twice: released once
    assert reserved(pool) == [0, 0, 0, 0]
    services.booking_create(spec=spec(count=8), idempotency_key="c", actor=dave, door="api")
    assert reserved(pool) == [8, 8, 8, 8]


def test_a_repeated_idempotency_key_returns_the_first_booking(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    from brokers.errors import IdempotencyKeyReused

    active_pool(acme, size=8)
    first = services.booking_create(
        spec=spec(count=2), idempotency_key="same", actor=dave, door="api"
    )
    again = services.booking_create(
        spec=spec(count=2), idempotency_key="same", actor=dave, door="api"
    )
    assert again.pk == first.pk and Booking.objects.count() == 1
    # Another request under the same key is refused, never answered with the first booking.
    with pytest.raises(IdempotencyKeyReused, match=first.national_id):
        services.booking_create(spec=spec(count=6), idempotency_key="same", actor=dave, door="api")
    assert Booking.objects.count() == 1


def test_multi_pool_booking_is_all_or_nothing(dave: Any, acme: Any, active_pool: Any) -> None:
    a = active_pool(acme, size=8)
    b = active_pool(acme, size=8)
    services.booking_create(
        spec=spec(count=8),
        option=[(b.national_id, 8)],
        idempotency_key="fill",
        actor=dave,
        door="api",
    )
    with pytest.raises(CapacityExhausted):
        services.booking_create(
            spec=spec(count=8, allow_split=True, max_centers=2),
            option=[(a.national_id, 4), (b.national_id, 4)],
            idempotency_key="split",
            actor=dave,
            door="api",
        )
    # Nothing of the refused booking survives: no row, no reservation on the free pool.
    assert not Booking.objects.filter(idempotency_key="split").exists()
    assert reserved(a) in ([], [0, 0, 0, 0])


def test_pools_that_are_not_active_take_no_bookings(dave: Any, acme: Any, active_pool: Any) -> None:
    pool = active_pool(acme, size=8)
    pool.status = Status.DEGRADED
    pool.save()
    with pytest.raises(CapacityExhausted) as refused:
        services.booking_create(
            spec=spec(), option=[(pool.national_id, 4)], idempotency_key="x", actor=dave, door="api"
        )
    assert refused.value.code == "pool.not_bookable"


def test_the_database_refuses_an_oversold_slot_even_around_the_ledger(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """B1: raw writes that would oversell are refused by the CHECK constraint."""
    pool = active_pool(acme, size=8)
    services.booking_create(spec=spec(count=8), idempotency_key="a", actor=dave, door="api")
    cases = 0
    for sql in (
        "UPDATE brokers_poolslot SET reserved = reserved + 1 WHERE pool_id = %s",
        "UPDATE brokers_poolslot SET capacity = 4 WHERE pool_id = %s",
        "UPDATE brokers_poolslot SET reserved = -1 WHERE pool_id = %s",
    ):
        with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql, [pool.pk])
        cases += 1
    assert cases == 3 and reserved(pool) == [8, 8, 8, 8]


def test_capacity_reduction_below_what_is_booked_is_refused(
    dave: Any, alice: Any, acme: Any, active_pool: Any
) -> None:
    pool = active_pool(acme, size=16, per_node=8)
    services.booking_create(spec=spec(count=12), idempotency_key="a", actor=dave, door="api")
    pool.status = Status.DRAFT  # hardware may change only outside verification
    pool.save()
    with pytest.raises(ValidationError) as refused:
        registry_services.pool_update(pool=pool, actor=alice, door="api", data={"nodes": 1})
    assert "pool.in_use" in str(refused.value)
    pool.refresh_from_db()
    assert pool.nodes == 2


def test_a_pool_going_offline_flags_its_bookings(
    dave: Any, pat: Any, acme: Any, active_pool: Any, django_capture_on_commit_callbacks: Any
) -> None:
    pool = active_pool(acme, size=8)
    booking = services.booking_create(spec=spec(), idempotency_key="a", actor=dave, door="api")
    with django_capture_on_commit_callbacks(execute=True):
        registry_services.lifecycle_transition(
            obj=pool, to=Status.DEGRADED, reason="heartbeats late", actor=None, door="worker"
        )
    booking.refresh_from_db()
    assert "degraded" in booking.flagged_reason
    assert booking.events.filter(kind=EventKind.FLAGGED).exists()


def test_quotas_refuse_and_name_the_quota(
    dave: Any, pat: Any, deepai: Any, acme: Any, active_pool: Any
) -> None:
    active_pool(acme, size=32, per_node=8)
    services.quota_set(
        organization=deepai,
        actor=pat,
        door="api",
        max_concurrent_accelerators=6,
        max_accelerator_hours_per_month=None,
    )
    first = services.booking_create(spec=spec(count=4), idempotency_key="a", actor=dave, door="api")
    with pytest.raises(QuotaExceeded) as refused:
        services.booking_create(spec=spec(count=4), idempotency_key="b", actor=dave, door="api")
    assert refused.value.code == "quota.max_concurrent_accelerators"
    services.quota_set(
        organization=deepai,
        actor=pat,
        door="api",
        max_concurrent_accelerators=None,
        max_accelerator_hours_per_month=5,
    )
    # Hours are counted per calendar month of the start: a later booking in the same month
    # (three hours after the first, or at the same time when the month ends before: run in the
    # last hours of a month, +3 h fell in the next one and the quota was rightly fresh).
    start = first.window_start + dt.timedelta(hours=3)
    if (start.year, start.month) != (first.window_start.year, first.window_start.month):
        start = first.window_start
    later = dataclasses.replace(spec(count=4), earliest_start=start)
    with pytest.raises(QuotaExceeded) as refused:
        services.booking_create(spec=later, idempotency_key="c", actor=dave, door="api")
    assert refused.value.code == "quota.max_accelerator_hours_per_month"


def test_operators_do_not_book(alice: Any, acme: Any, active_pool: Any) -> None:
    from django.core.exceptions import PermissionDenied

    active_pool(acme)
    with pytest.raises(PermissionDenied):
        services.booking_create(spec=spec(), idempotency_key="a", actor=alice, door="api")


def test_the_oversell_checker_sees_allocations_written_around_the_ledger(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """B3m in miniature: the checker is not blind to rows the ledger never saw."""
    pool = active_pool(acme, size=8)
    booking = services.booking_create(
        spec=spec(count=8), idempotency_key="a", actor=dave, door="api"
    )
    assert ledger.oversold_pools() == {}
    Allocation.objects.create(
        booking=booking,
        pool=pool,
        accelerators=3,
        start=booking.window_start,
        end=booking.window_end,
    )
    assert ledger.oversold_pools() == {pool.pk: 3}


def test_a_booking_whose_center_went_offline_is_replaced_elsewhere(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """What the re-placement task does when a center goes offline before the workload starts:
    same specification, that center excluded, the old booking replaced and its capacity back."""
    first = active_pool(acme, size=8, price="5.00")
    other = active_pool(acme, size=8, price="9.00")
    booking = services.booking_create(
        spec=spec(count=8), idempotency_key="o", actor=dave, door="api"
    )
    assert booking.allocations.get().pool_id == first.pk
    new = services.booking_replace(
        booking=booking, exclude_center=first.center.national_id, reason="center offline"
    )
    booking.refresh_from_db()
    assert booking.status == BookingStatus.REPLACED and booking.replaced_by_id == new.pk
    assert new.allocations.get().pool_id == other.pk
    assert reserved(first) == [0, 0, 0, 0] and reserved(other) == [8, 8, 8, 8]
    assert booking.events.filter(kind=EventKind.REPLACED).get().data["replaced_by"] == (
        new.national_id
    )
    # Nothing else fits: the next replacement fails the booking and gives its capacity back.
    assert (
        services.booking_replace(
            booking=new, exclude_center=other.center.national_id, reason="offline too"
        )
        is None
    )
    new.refresh_from_db()
    assert new.status == BookingStatus.FAILED and reserved(other) == [0, 0, 0, 0]


@pytest.mark.django_db(transaction=True)
def test_a_retry_after_a_conflict_starts_a_new_transaction(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """B7: PostgreSQL reports one serialization failure (40001) in the middle of the first
    attempt's slot upsert, after its booking, allocation and event rows (a trigger raises it
    once); the retry runs in a new transaction, no row of the failed attempt survives and the
    slots are reserved exactly once."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL trigger")
    pool = active_pool(acme, size=8)
    # The marker must survive the failed attempt's rollback, so it is kept outside the
    # transaction: a sequence (nextval is never rolled back).
    with connection.cursor() as cur:
        cur.execute("DROP SEQUENCE IF EXISTS b7_attempts")
        cur.execute("CREATE SEQUENCE b7_attempts")
        cur.execute(
            "CREATE OR REPLACE FUNCTION b7_fail_once() RETURNS trigger AS $$ BEGIN "
            "IF nextval('b7_attempts') = 3 THEN "
            "RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cur.execute(
            "CREATE TRIGGER b7_conflict BEFORE INSERT OR UPDATE ON brokers_poolslot "
            "FOR EACH ROW EXECUTE FUNCTION b7_fail_once()"
        )
    try:
        booking = services.booking_create(
            spec=spec(count=8), idempotency_key="b7", actor=dave, door="api"
        )
        with connection.cursor() as cur:
            cur.execute("SELECT last_value FROM b7_attempts")
            attempts = cur.fetchone()[0]
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS b7_conflict ON brokers_poolslot")
            cur.execute("DROP FUNCTION IF EXISTS b7_fail_once()")
            cur.execute("DROP SEQUENCE IF EXISTS b7_attempts")
    assert attempts == 3 + 4  # two slot rows, the failure, then the retry's four slots
    assert Booking.objects.count() == 1 and Allocation.objects.count() == 1
    assert booking.allocations.get().accelerators == 8
    assert reserved(pool) == [8, 8, 8, 8]  # reserved once, not twice
    assert ledger.oversold_pools() == {}


def test_a_hold_keeps_capacity_until_confirmed_or_it_lapses(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """B10: holds lapse on database time and give their capacity back; a lapsed hold cannot be
    confirmed (hold.expired); a confirmed one stays."""
    pool = active_pool(acme, size=8)
    held = services.booking_create(
        spec=spec(count=8), idempotency_key="h1", actor=dave, door="api", hold=True
    )
    assert held.status == BookingStatus.HELD and reserved(pool) == [8, 8, 8, 8]
    assert held.hold_expires_at is not None
    confirmed = services.booking_confirm(booking=held, actor=dave, door="api")
    assert confirmed.status == BookingStatus.CONFIRMED
    assert services.booking_confirm(booking=held, actor=dave, door="api").status == "confirmed"
    services.booking_cancel(booking=confirmed, actor=dave, door="api")

    lapsing = services.booking_create(
        spec=spec(count=8), idempotency_key="h2", actor=dave, door="api", hold=True
    )
    # Its time passes on the database's clock.
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE brokers_booking SET hold_expires_at = hold_expires_at - interval '1 hour' "
            "WHERE id = %s"
            if connection.vendor == "postgresql"
            else "UPDATE brokers_booking SET hold_expires_at = '2000-01-01 00:00:00' WHERE id = %s",
            [lapsing.pk],
        )
    with pytest.raises(ValidationError) as lapsed:
        services.booking_confirm(booking=lapsing, actor=dave, door="api")
    assert "hold.expired" in str(lapsed.value)
    lapsing.refresh_from_db()
    assert lapsing.status == BookingStatus.CANCELLED and reserved(pool) == [0, 0, 0, 0]
    assert services.bookings_expire_holds() == 0  # lapses once


def test_the_sweep_lets_lapsed_holds_go(dave: Any, acme: Any, active_pool: Any) -> None:
    pool = active_pool(acme, size=8)
    hold = services.booking_create(
        spec=spec(count=4), idempotency_key="h", actor=dave, door="api", hold=True
    )
    assert services.bookings_expire_holds() == 0
    Booking.objects.filter(pk=hold.pk).update(hold_expires_at=hold.created_at)
    assert services.bookings_expire_holds() == 1
    hold.refresh_from_db()
    assert hold.status == BookingStatus.CANCELLED and reserved(pool) == [0, 0, 0, 0]
