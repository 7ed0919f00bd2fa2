"""Reads of verification that carry a rule: tenancy (through the registry's selectors) and
availability."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db.models import Avg, Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from registry import selectors as registry_selectors
from registry.actors import Actor
from registry.choices import Status
from registry.models import LifecycleTransition, Pool
from verification.choices import RunState
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun

# A pool is known to be up while active, known to be down while offline. Degraded means "silent
# for a while, not yet judged": neither, so it counts in no denominator.
UP_STATUSES = frozenset({Status.ACTIVE})
KNOWN_STATUSES = frozenset({Status.ACTIVE, Status.OFFLINE})


def runs_visible_to(user: Actor) -> QuerySet[VerificationRun]:
    """Runs of the pools the user operates (platform staff: all). Evidence is the operator's."""
    pools = registry_selectors.pools_editable_by(user).values("pk")
    return VerificationRun.objects.select_related("pool").filter(pool__in=pools)


def drift_record(measurements: list[float]) -> float | None:
    """The record a new measurement is held to: the best of the last
    ``VERIFICATION_DRIFT_HISTORY`` passed measurements (newest last), None without any."""
    history = settings.VERIFICATION_DRIFT_HISTORY
    recent = measurements[-history:] if history > 0 else []
    return max(recent) if recent else None


def drift_floor(record: float) -> float:
    """Below this a pass is drift: (1 - ``VERIFICATION_DRIFT_THRESHOLD``) x the record."""
    return record * (1.0 - float(settings.VERIFICATION_DRIFT_THRESHOLD))


def passed_measurements(pool: Pool, *, exclude_run: int | None = None) -> list[float]:
    """The pool's measured figures of its last passed runs, oldest first (as many as the drift
    rule reads)."""
    runs = VerificationRun.objects.filter(
        pool=pool, state=RunState.PASSED, measured_tflops_per_accelerator__isnull=False
    )
    if exclude_run is not None:
        runs = runs.exclude(pk=exclude_run)
    newest_first = runs.order_by("-finished_at").values_list(
        "measured_tflops_per_accelerator", flat=True
    )[: settings.VERIFICATION_DRIFT_HISTORY]
    return [x for x in newest_first if x is not None][::-1]


def run_trend_of(pool: Pool, *, runs: int) -> list[VerificationRun]:
    """The pool's last ``runs`` finished (passed or failed) runs, oldest first, plus the
    ``VERIFICATION_DRIFT_HISTORY`` before them (so the first drawn run's record is known); only
    the public part of each run is loaded (when, verdict, figures), not its evidence."""
    rows = (
        VerificationRun.objects.filter(
            pool=pool, state__in=(RunState.PASSED, RunState.FAILED), finished_at__isnull=False
        )
        .order_by("-finished_at", "-id")
        .only(
            "run_id",
            "state",
            "finished_at",
            "verdict_reason",
            "drift",
            "measured_tflops_per_accelerator",
            "declared_tflops_per_accelerator",
        )[: runs + settings.VERIFICATION_DRIFT_HISTORY]
    )
    return list(rows)[::-1]


def heartbeats_visible_to(user: Actor) -> QuerySet[Heartbeat]:
    """Heartbeats of the pools the user operates (platform staff: all)."""
    pools = registry_selectors.pools_editable_by(user).values("pk")
    return Heartbeat.objects.select_related("pool").filter(pool__in=pools)


def downtimes_visible_to(user: Actor) -> QuerySet[ScheduledDowntime]:
    """Downtimes of the pools and centers the user operates (platform staff: all)."""
    pools = registry_selectors.pools_editable_by(user).values("pk")
    centers = registry_selectors.centers_editable_by(user).values("pk")
    return ScheduledDowntime.objects.select_related("pool", "center").filter(
        Q(pool__in=pools) | Q(center__in=centers)
    )


@dataclass(frozen=True)
class DayAvailability:
    """One UTC day of a pool's record.

    ``availability`` = time up / time known; ``reliability`` is the same ratio with the
    operator's scheduled downtime left out of both. None when nothing was known that day.
    """

    date: dt.date
    known_seconds: float
    up_seconds: float
    availability: float | None
    scheduled_downtime_seconds: float
    reliability: float | None
    heartbeats: int
    mean_utilization: float | None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["date"] = self.date.isoformat()
        return data


Interval = tuple[dt.datetime, dt.datetime]


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(a: Interval, b: Interval) -> float:
    return max(0.0, (min(a[1], b[1]) - max(a[0], b[0])).total_seconds())


def status_segments(pool: Pool, start: dt.datetime, end: dt.datetime) -> list[tuple[Interval, str]]:
    """The pool's status over [start, end) as (interval, status) pieces, from its transitions."""
    transitions = LifecycleTransition.objects.filter(
        object_type=Pool._meta.label_lower, object_id=pool.pk
    ).order_by("time", "id")
    before = transitions.filter(time__lt=start).last()
    status = before.to_status if before else Status.DRAFT
    cursor, segments = start, []
    for row in transitions.filter(time__gte=start, time__lt=end):
        if row.time > cursor:
            segments.append(((cursor, row.time), status))
        cursor, status = max(cursor, row.time), row.to_status
    if end > cursor:
        segments.append(((cursor, end), status))
    return segments


def availability_by_day(
    *, pool: Pool, days: int, now: dt.datetime | None = None
) -> list[DayAvailability]:
    """Availability and reliability of ``pool`` for each of the last ``days`` UTC days (today
    up to ``now`` included), oldest first, from its lifecycle transitions, its and its center's
    scheduled downtime, and its heartbeats."""
    now = now or timezone.now()
    first_day = now.astimezone(dt.UTC).date() - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first_day, dt.time.min, tzinfo=dt.UTC)
    segments = status_segments(pool, start, now)
    downtime = _merge(
        [
            (d.start, d.end)
            for d in ScheduledDowntime.objects.filter(
                Q(pool=pool) | Q(center_id=pool.center_id), end__gt=start, start__lt=now
            )
        ]
    )
    beats = {
        row["day"]: row
        for row in Heartbeat.objects.filter(pool=pool, time__gte=start, time__lt=now)
        .annotate(day=TruncDate("time", tzinfo=dt.UTC))
        .values("day")
        .annotate(count=Count("id"), mean=Avg("utilization"))
    }
    out = []
    for offset in range(days):
        day = first_day + dt.timedelta(days=offset)
        day_start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        window = (day_start, min(day_start + dt.timedelta(days=1), now))
        known = up = known_planned = up_planned = 0.0
        for interval, status in segments:
            piece = _overlap(interval, window)
            if not piece or status not in KNOWN_STATUSES:
                continue
            clipped = (max(interval[0], window[0]), min(interval[1], window[1]))
            planned = sum(_overlap(clipped, d) for d in downtime)
            known += piece
            known_planned += planned
            if status in UP_STATUSES:
                up += piece
                up_planned += planned
        scheduled = sum(_overlap(window, d) for d in downtime)
        reliable_known = known - known_planned
        row = beats.get(day)
        out.append(
            DayAvailability(
                date=day,
                known_seconds=round(known, 3),
                up_seconds=round(up, 3),
                availability=round(up / known, 6) if known else None,
                scheduled_downtime_seconds=round(scheduled, 3),
                reliability=round((up - up_planned) / reliable_known, 6)
                if reliable_known > 0
                else None,
                heartbeats=row["count"] if row else 0,
                mean_utilization=round(row["mean"], 6) if row else None,
            )
        )
    return out


def national_utilization(
    *, hours: int = 24, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Utilization of the whole country per hour over the last ``hours``: busy over healthy
    accelerators summed across every heartbeat of the hour (so a big pool weighs more)."""
    from django.db.models import Sum
    from django.db.models.functions import TruncHour

    now = now or timezone.now()
    rows = (
        Heartbeat.objects.filter(time__gte=now - dt.timedelta(hours=hours), time__lte=now)
        .annotate(hour=TruncHour("time", tzinfo=dt.UTC))
        .values("hour")
        .annotate(busy=Sum("accelerators_busy"), healthy=Sum("accelerators_healthy"))
        .order_by("hour")
    )
    return [
        {
            "hour": row["hour"],
            "utilization": (row["busy"] / row["healthy"]) if row["healthy"] else 0.0,
            "healthy": row["healthy"],
        }
        for row in rows
    ]


def heartbeat_lag_seconds() -> float | None:
    """Age in seconds of the stalest last heartbeat among active pools (None: no active pool).

    Read at scrape time by the ``interconnect_heartbeat_lag_seconds`` gauge.
    """
    from django.db.models import Max

    from registry.choices import Status
    from registry.models import Pool

    latest = (
        Pool.objects.filter(status=Status.ACTIVE)
        .annotate(last=Max("heartbeats__time"))
        .values_list("last", flat=True)
    )
    times = list(latest)
    if not times:
        return None
    now = timezone.now()
    stalest = min((t for t in times if t is not None), default=None)
    if stalest is None:
        return None
    age: float = (now - stalest).total_seconds()
    return age
