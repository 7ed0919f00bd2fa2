"""Tracking after verification: the heartbeat sweeper, and availability on a known timeline."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from registry.choices import Status
from registry.models import LifecycleTransition, Pool
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory
from verification import services
from verification.models import Heartbeat, ScheduledDowntime
from verification.selectors import availability_by_day

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)


def verified_pool(operator: Any, verified_at: dt.datetime) -> Pool:
    pool = force_status(PoolFactory(center=CenterFactory(operator=operator)), Status.ACTIVE)
    Pool.objects.filter(pk=pool.pk).update(verified_at=verified_at)
    pool.refresh_from_db()
    return pool


def beat(pool: Pool, at: dt.datetime, utilization: float = 0.5) -> Heartbeat:
    return Heartbeat.objects.create(
        pool=pool,
        time=at,
        agent_id="a",
        utilization=utilization,
        accelerators_healthy=32,
        accelerators_busy=int(32 * utilization),
    )


# --- heartbeat sweep ---------------------------------------------------------------------------


def test_a_silent_pool_goes_degraded_then_offline_and_comes_back(acme: Any, settings: Any) -> None:
    settings.HEARTBEAT_DEGRADED_AFTER, settings.HEARTBEAT_OFFLINE_AFTER = 30, 120
    pool = verified_pool(acme, T0)
    beat(pool, T0 + dt.timedelta(seconds=5))

    services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=20))
    pool.refresh_from_db()
    assert pool.status == Status.ACTIVE

    services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=40))
    pool.refresh_from_db()
    assert pool.status == Status.DEGRADED
    assert pool.status_reason == "no heartbeat for 35 s"

    services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=130))
    pool.refresh_from_db()
    assert pool.status == Status.OFFLINE

    beat(pool, T0 + dt.timedelta(seconds=200))
    moves = services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=205))
    pool.refresh_from_db()
    assert pool.status == Status.ACTIVE and pool.status_reason == "heartbeats resumed"
    assert moves == {"active": 1, "degraded": 0, "offline": 0}


def test_a_pool_never_heard_from_counts_from_its_verification(acme: Any) -> None:
    pool = verified_pool(acme, T0)

    services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=31))

    pool.refresh_from_db()
    assert pool.status == Status.DEGRADED


def test_the_sweeper_leaves_unverified_and_foreign_reasons_alone(acme: Any) -> None:
    unverified = force_status(PoolFactory(center=CenterFactory(operator=acme)), Status.ACTIVE)
    degraded_by_verifier = verified_pool(acme, T0)
    Pool.objects.filter(pk=degraded_by_verifier.pk).update(
        status=Status.DEGRADED, status_reason="agent unreachable for re-verification"
    )
    beat(degraded_by_verifier, T0 + dt.timedelta(seconds=1))

    services.heartbeat_sweep(now=T0 + dt.timedelta(seconds=2))
    services.heartbeat_sweep(now=timezone.now())

    unverified.refresh_from_db()
    degraded_by_verifier.refresh_from_db()
    assert unverified.status == Status.ACTIVE
    assert degraded_by_verifier.status != Status.ACTIVE


def _report(actor: Any, pool: Pool, healthy: int) -> None:
    """A heartbeat through the service, as the telemetry server and the API record it."""
    services.heartbeat_record(
        actor=actor,
        agent_id="agent-1",
        sent_at=None,
        pools=[
            services.PoolBeat(
                national_id=pool.national_id,
                utilization=0.0,
                accelerators_healthy=healthy,
                accelerators_busy=0,
            )
        ],
    )
    pool.refresh_from_db()


def test_a_pool_with_unhealthy_accelerators_is_degraded_until_all_are_back(
    acme: Any, alice: Any
) -> None:
    pool = verified_pool(acme, T0)
    _report(alice, pool, pool.accelerators)
    assert pool.status == Status.ACTIVE

    # A node drained or down in the center's scheduler: its accelerators leave the healthy count.
    _report(alice, pool, pool.accelerators - 8)
    assert pool.status == Status.DEGRADED
    assert (
        pool.status_reason
        == f"unhealthy accelerators: {pool.accelerators - 8} of {pool.accelerators} healthy"
    )
    _report(alice, pool, pool.accelerators - 8)  # no second move, no error
    assert (
        LifecycleTransition.objects.filter(
            object_key=pool.national_id, to_status="degraded"
        ).count()
        == 1
    )

    _report(alice, pool, pool.accelerators)
    assert pool.status == Status.ACTIVE
    assert pool.status_reason == f"all {pool.accelerators} accelerators healthy again"


def test_full_health_does_not_lift_a_degradation_the_rule_did_not_set(
    acme: Any, alice: Any
) -> None:
    pool = verified_pool(acme, T0)
    force_status(pool, Status.DEGRADED)
    Pool.objects.filter(pk=pool.pk).update(status_reason="measured 20% below its record")
    _report(alice, pool, pool.accelerators)
    assert pool.status == Status.DEGRADED
    assert pool.status_reason == "measured 20% below its record"


def test_running_the_sweep_twice_moves_a_pool_once(acme: Any) -> None:
    pool = verified_pool(acme, T0)
    now = T0 + dt.timedelta(seconds=60)

    first = services.heartbeat_sweep(now=now)
    second = services.heartbeat_sweep(now=now)

    assert first["degraded"] == 1 and second["degraded"] == 0
    transitions = LifecycleTransition.objects.filter(
        object_key=pool.national_id, to_status="degraded"
    )
    assert transitions.count() == 1


def test_old_heartbeats_are_pruned_in_batches(acme: Any, settings: Any) -> None:
    settings.HEARTBEAT_RETENTION_DAYS = 1
    pool = verified_pool(acme, T0)
    for minutes in (0, 1, 2):
        beat(pool, T0 + dt.timedelta(minutes=minutes))
    recent = beat(pool, T0 + dt.timedelta(days=2))

    now = T0 + dt.timedelta(days=2, hours=1)
    assert services.heartbeat_prune(now=now, batch=2) == 2
    assert services.heartbeat_prune(now=now, batch=2) == 1
    assert list(Heartbeat.objects.values_list("pk", flat=True)) == [recent.pk]


# --- availability ------------------------------------------------------------------------------


def timeline(pool: Pool, moves: list[tuple[dt.datetime, str, str]]) -> None:
    """Write the pool's transitions at chosen times. The table is append-only and ``time`` is
    auto_now_add, so the clock Django reads is set for each insert."""
    for at, old, new in moves:
        with mock.patch("django.utils.timezone.now", return_value=at):
            LifecycleTransition.objects.create(
                object_type="registry.pool",
                object_id=pool.pk,
                object_key=pool.national_id,
                from_status=old,
                to_status=new,
                door="worker",
            )


def test_availability_and_reliability_on_a_constructed_timeline(acme: Any) -> None:
    pool = PoolFactory(center=CenterFactory(operator=acme))
    h = dt.timedelta(hours=1)
    # Day 1 (Nov 20): active from 06:00; offline 12:00-18:00, of which 12:00-16:00 announced.
    # Day 2 (Nov 21): active all day. Day 3 (Nov 22): degraded 00:00-06:00, then active.
    timeline(
        pool,
        [
            (T0 + 6 * h, Status.VERIFYING, Status.ACTIVE),
            (T0 + 12 * h, Status.ACTIVE, Status.OFFLINE),
            (T0 + 18 * h, Status.OFFLINE, Status.ACTIVE),
            (T0 + 48 * h, Status.ACTIVE, Status.DEGRADED),
            (T0 + 54 * h, Status.DEGRADED, Status.ACTIVE),
        ],
    )
    ScheduledDowntime.objects.create(
        center=pool.center, start=T0 + 12 * h, end=T0 + 16 * h, reason="power work"
    )
    beat(pool, T0 + 7 * h, 0.25)
    beat(pool, T0 + 8 * h, 0.75)

    days = availability_by_day(pool=pool, days=3, now=T0 + 72 * h - dt.timedelta(seconds=1))

    day1, day2, day3 = days
    assert day1.date == dt.date(2026, 11, 20)
    # Known 06:00-24:00 (18 h), up 12 h of it.
    assert day1.known_seconds == 18 * 3600 and day1.up_seconds == 12 * 3600
    assert day1.availability == pytest.approx(12 / 18)
    # Without the announced 4 h: up 12 h of 14 h known.
    assert day1.reliability == pytest.approx(12 / 14)
    assert day1.scheduled_downtime_seconds == 4 * 3600
    assert (day1.heartbeats, day1.mean_utilization) == (2, 0.5)
    assert day2.availability == 1.0 and day2.reliability == 1.0 and day2.heartbeats == 0
    # Degraded time is neither up nor down: it leaves the denominator.
    assert day3.known_seconds == 18 * 3600 - 1 and day3.availability == 1.0


def test_a_pool_never_listed_has_no_availability(acme: Any) -> None:
    pool = PoolFactory(center=CenterFactory(operator=acme))

    days = availability_by_day(pool=pool, days=2, now=T0 + dt.timedelta(hours=30))

    assert [d.availability for d in days] == [None, None]
