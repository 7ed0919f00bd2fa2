"""The booking ledger: reserve and release accelerators on pools over time, never beyond capacity.

Design (RELIABILITY 1.5, design D): time is cut into slots of ``BROKER_SLOT_MINUTES``; a
``PoolSlot`` row counts the accelerators reserved on one pool during one slot, and its CHECK
constraint ``0 <= reserved <= capacity`` is the database's final word. A reservation, inside the
caller's transaction and for each pool in ascending id order (one global lock order, so two
bookings never wait on each other in a cycle):

1. locks the pool and its center rows ``FOR SHARE`` and checks both are ``active``: a lifecycle
   transition (an UPDATE of that row) waits for the booking to commit, or the booking sees the
   new status, never something in between;
2. adds ``n`` to every slot of the window in one upsert (``INSERT ... ON CONFLICT DO UPDATE ...
   WHERE reserved + n <= capacity``, the capacity being the pool's size read in step 1, never a
   slot row's older figure; a missing slot row is created with ``n``), taking the rows in slot
   order, and compares the affected row count with the number of slots.

Spot bookings (the ``spot`` class) count in ``reserved`` like every booking and also in
``spot_reserved`` (``CHECK 0 <= spot_reserved <= reserved``): so the firm part ``reserved -
spot_reserved`` never exceeds the capacity, and spot fills what firm bookings leave. A reserved
or priority booking that does not fit may preempt spot bookings in its own transaction
(``brokers.market``): they give their slots back, then it reserves as usual.

A booking that ends (finished, failed, cancelled, replaced, lapsed) gives back the slots from
its end on; the slots before stay counted (they were used), so ``reserved`` of a slot is the sum
of the bookings that held it, never less.

Any shortfall raises ``CapacityExhausted``; the caller's transaction then rolls back every pool
it touched (multi-pool bookings are all-or-nothing). Deadlocks and serialization failures are
retried by :func:`in_fresh_transactions`, each attempt in a NEW transaction (a retry inside the
failed one is how OpenStack Placement oversold, RELIABILITY 1.1).

On PostgreSQL a booking from ``services.booking_create`` runs these same two steps, in this
order and with this guard, inside the ``broker_book`` function (``brokers.booking_sql``,
migration 0006), together with the booking's own rows, in one round trip; :func:`reserve` is
the path of re-placement, of firms with a quota and of SQLite.

Raw SQL is used where the ORM cannot say it (``ON CONFLICT``, affected row counts with a
guarded increment, ordered row locks); it runs on PostgreSQL and on SQLite (``make run``), where
IMMEDIATE transactions serialize writers and row locks are not needed.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings
from django.db import OperationalError, connection, transaction

from brokers.choices import RESERVING_STATUSES
from brokers.errors import CapacityExhausted, RetryableConflict
from protos.errors import ERRORS, Catalogued
from registry.choices import Status
from registry.context import DEFAULT_DEADLINE_MARGIN_SECONDS as DEFAULT_DEADLINE_MARGIN_SECONDS
from registry.context import deadline_at
from registry.context import server_deadline as server_deadline
from registry.queries import CENTER_TABLE, POOL_TABLE

_T = TypeVar("_T")

# SQLSTATEs that mean "another transaction won; run the whole thing again".
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# PostgreSQL's "canceling statement due to statement timeout".
QUERY_CANCELED = "57014"


def budget_ms() -> int | None:
    """What remains of ``deadline_at`` in whole milliseconds (at least 1), None without a
    deadline; ``DeadlineExceeded`` once it has passed (nothing is sent then)."""
    deadline = deadline_at.get()
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("The deadline passed before the booking started.")
    return max(1, int(remaining * 1000))


class DeadlineExceeded(Catalogued, Exception):
    """The caller's deadline passed while the database worked (gRPC DEADLINE_EXCEEDED)."""

    spec = ERRORS["deadline_exceeded"]


@dataclass(frozen=True)
class Part:
    """``accelerators`` accelerators of pool ``pool_id`` (a database id)."""

    pool_id: int
    accelerators: int


def slot_minutes() -> int:
    return int(getattr(settings, "BROKER_SLOT_MINUTES", 15))


def slot_bounds(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The window rounded outward to whole slots: floor(start), ceil(end)."""
    step = slot_minutes() * 60
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    first = (start - epoch).total_seconds() // step
    last = -((end - epoch).total_seconds() // -step)
    return (
        epoch + dt.timedelta(seconds=first * step),
        epoch + dt.timedelta(seconds=last * step),
    )


def slot_starts(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Start of every slot the window ``[start, end)`` touches."""
    first, last = slot_bounds(start, end)
    step = dt.timedelta(minutes=slot_minutes())
    out = []
    moment = first
    while moment < last:
        out.append(moment)
        moment += step
    return out


def _db_time(value: dt.datetime) -> str | None:
    # Raw SQL bypasses field conversion; SQLite stores naive UTC text, PostgreSQL timestamptz.
    return connection.ops.adapt_datetimefield_value(value)


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def apply_deadline() -> None:
    """Bound the current transaction's statements by the caller's remaining time (PostgreSQL)."""
    deadline = deadline_at.get()
    if deadline is None:
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("The deadline passed before the booking started.")
    if not _is_postgres():
        return
    with connection.cursor() as cur:
        cur.execute(
            "SELECT set_config('statement_timeout', %s, true)", [str(int(remaining * 1000))]
        )


def lock_bookable_pools(pool_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """Lock the pools (and their centers) against lifecycle changes for this transaction and
    return ``{pool_id: (capacity, national id)}``; ``CapacityExhausted`` if one is not
    bookable."""
    ids = sorted(set(pool_ids))
    if not ids:
        return {}
    marks = ",".join(["%s"] * len(ids))
    lock = " FOR SHARE" if _is_postgres() else ""
    with connection.cursor() as cur:
        # One statement, rows in pool id order: the global lock order.
        cur.execute(
            "SELECT p.id, p.national_id, p.status, c.status, p.accelerators "
            f"FROM {POOL_TABLE} p JOIN {CENTER_TABLE} c ON c.id = p.center_id "
            f"WHERE p.id IN ({marks}) ORDER BY p.id{lock}",
            ids,
        )
        rows = cur.fetchall()
    found = {row[0] for row in rows}
    if found != set(ids):
        raise CapacityExhausted("A pool of the booking no longer exists.", code="pool.unknown")
    capacity: dict[int, tuple[int, str]] = {}
    for pool_id, national_id, pool_status, center_status, accelerators in rows:
        if pool_status != Status.ACTIVE or center_status != Status.ACTIVE:
            raise CapacityExhausted(
                f"Pool {national_id} takes no bookings: it is {pool_status} "
                f"(center {center_status}).",
                code="pool.not_bookable",
            )
        capacity[pool_id] = (accelerators, national_id)
    return capacity


def reserve(
    parts: Sequence[Part], start: dt.datetime, end: dt.datetime, *, spot: bool = False
) -> None:
    """Reserve every part over ``[start, end)`` or raise ``CapacityExhausted``; ``spot``
    counts it in ``spot_reserved`` too (it may be preempted).

    Must run inside a transaction; on error the caller rolls it back whole.
    """
    assert transaction.get_connection().in_atomic_block, "reserve() needs a transaction"
    merged: dict[int, int] = {}
    for part in parts:
        if part.accelerators < 1:
            raise CapacityExhausted("Every part needs at least one accelerator.", code="invalid")
        merged[part.pool_id] = merged.get(part.pool_id, 0) + part.accelerators
    pools = lock_bookable_pools(merged)
    slots = [_db_time(s) for s in slot_starts(start, end)]
    with connection.cursor() as cur:
        for pool_id in sorted(merged):
            n = merged[pool_id]
            capacity, national_id = pools[pool_id]
            if n > capacity:
                raise CapacityExhausted(
                    f"The request needs {n} accelerators of {national_id}, which has {capacity}."
                )
            # One upsert per pool: a missing slot row is created holding ``n``; an existing one
            # gets ``n`` more only where it still fits. Rows are taken in slot order (the VALUES
            # order), so two bookings lock a pool's slots in the same order. "Fits" is measured
            # against the pool's size now (locked above), not the row's own ``capacity``, which
            # may date from when the pool was larger (a past slot); the row takes the new size.
            values = ",".join(["(%s, %s, %s, %s, %s)"] * len(slots))
            params: list[int | str | None] = []
            for slot in slots:
                params += [pool_id, slot, capacity, n, n if spot else 0]
            cur.execute(
                "INSERT INTO brokers_poolslot (pool_id, slot_start, capacity, reserved, "
                f"spot_reserved) VALUES {values} ON CONFLICT (pool_id, slot_start) DO UPDATE "
                "SET reserved = brokers_poolslot.reserved + excluded.reserved, "
                "spot_reserved = brokers_poolslot.spot_reserved + excluded.spot_reserved, "
                "capacity = excluded.capacity "
                "WHERE brokers_poolslot.reserved + excluded.reserved <= excluded.capacity",
                params,
            )
            # Inserted plus updated rows; a slot that is full was neither.
            if cur.rowcount != len(slots):
                raise CapacityExhausted(
                    f"Not enough free accelerators on {national_id} for the whole window.",
                )


def release(
    parts: Sequence[Part], start: dt.datetime, end: dt.datetime, *, spot: bool = False
) -> None:
    """Give back what :func:`reserve` took for the same parts over the slots of ``[start, end)``
    (same lock order); ``start`` may be later than the booking's start, to give back only the
    rest of its window; ``spot`` as it was reserved.

    The caller makes sure it runs once per booking (a compare-and-set on the booking status).
    """
    if end <= start:
        return
    first, last = (_db_time(x) for x in slot_bounds(start, end))
    merged: dict[int, int] = {}
    for part in parts:
        merged[part.pool_id] = merged.get(part.pool_id, 0) + part.accelerators
    with connection.cursor() as cur:
        for pool_id in sorted(merged):
            n = merged[pool_id]
            cur.execute(
                "UPDATE brokers_poolslot SET reserved = reserved - %s, "
                "spot_reserved = spot_reserved - %s "
                "WHERE pool_id = %s AND slot_start >= %s AND slot_start < %s",
                [n, n if spot else 0, pool_id, first, last],
            )


def _sqlstate(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(exc, "sqlstate", None)


def in_fresh_transactions(work: Callable[[], _T], *, attempts: int = 5) -> _T:
    """Run ``work`` in a new durable transaction; rerun it in another NEW transaction when the
    database reports a deadlock or serialization failure. ``RetryableConflict`` after
    ``attempts``; ``DeadlineExceeded`` if the statement timeout fired."""
    for attempt in range(attempts):
        try:
            with transaction.atomic(durable=True):
                apply_deadline()
                result = work()
                # Each statement had the remaining time; the sum may not. Never commit for a
                # caller whose deadline passed (the rollback leaves nothing behind).
                deadline = deadline_at.get()
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("The deadline passed before the booking committed.")
                return result
        except OperationalError as exc:
            state = _sqlstate(exc)
            if state == QUERY_CANCELED:
                raise DeadlineExceeded("The deadline passed while booking.") from exc
            if state not in RETRYABLE_SQLSTATES:
                raise
            # Jittered back-off so the losers of a deadlock do not collide again.
            time.sleep(random.uniform(0, 0.005 * (2**attempt)))
    raise RetryableConflict(f"Gave up after {attempts} conflicting attempts; retry the request.")


OVERSELL_SQL = """
WITH e AS (
    SELECT a.pool_id, a.start AS t, a.accelerators AS d
    FROM brokers_allocation a JOIN brokers_booking b ON b.id = a.booking_id
    WHERE b.status IN ({marks}){firm}
    UNION ALL
    SELECT a.pool_id, a."end" AS t, -a.accelerators AS d
    FROM brokers_allocation a JOIN brokers_booking b ON b.id = a.booking_id
    WHERE b.status IN ({marks}){firm}
),
s AS (SELECT pool_id, t, SUM(d) AS d FROM e GROUP BY pool_id, t),
r AS (SELECT pool_id, SUM(d) OVER (PARTITION BY pool_id ORDER BY t) AS used FROM s)
SELECT r.pool_id, MAX(r.used) - p.accelerators AS over
FROM r JOIN {POOL_TABLE} p ON p.id = r.pool_id
GROUP BY r.pool_id, p.accelerators
HAVING MAX(r.used) > p.accelerators
"""
# Classes whose bookings may be preempted (their capacity is lent, not sold firmly).
PREEMPTIBLE_CLASSES = ("spot",)


def oversold_pools(*, firm_only: bool = False) -> dict[int, int]:
    """The oversell checker (RELIABILITY 1.7) over allocations: ``{pool_id: excess}`` for every
    pool where, at some instant, reserving bookings hold more accelerators than it has.

    It reads allocations, not slot counters, so it also catches rows written around the ledger.
    Ends and starts at the same instant cancel first (a window is ``[start, end)``). Spot
    bookings count like every booking (the slots hold them too); ``firm_only`` counts only the
    firm ones (reserved, priority), which must never exceed a pool even where spot is oversold.
    """
    statuses = sorted(RESERVING_STATUSES)
    marks = ",".join(["%s"] * len(statuses))
    firm = ""
    params: list[str] = list(statuses)
    if firm_only:
        firm = f" AND b.booking_class NOT IN ({','.join(['%s'] * len(PREEMPTIBLE_CLASSES))})"
        params += PREEMPTIBLE_CLASSES
    with connection.cursor() as cur:
        cur.execute(OVERSELL_SQL.format(marks=marks, POOL_TABLE=POOL_TABLE, firm=firm), params * 2)
        return {pool_id: int(over) for pool_id, over in cur.fetchall()}


# Placement asks "what is free if spot bookings were preempted?" while this is True: free
# capacity is then measured on the firm part of each slot (``reserved - spot_reserved``).
firm_view: contextvars.ContextVar[bool] = contextvars.ContextVar("firm_view", default=False)
USED_ALL = "MAX(s.reserved)"
USED_FIRM = "MAX(s.reserved - s.spot_reserved)"
# The accelerators a pool (alias ``p``) has reserved over a window: its most reserved slot, an
# index probe on (pool_id, slot_start); the parameters are the window's first and last slot
# bounds (:func:`slot_bounds`). Every free-capacity figure is ``p.accelerators`` less this.
USED_SQL = (
    f"(SELECT {USED_ALL} FROM brokers_poolslot s WHERE s.pool_id = p.id "
    "AND s.slot_start >= %s AND s.slot_start < %s)"
)


def used_expression(sql: str) -> str:
    """``sql`` (a free-capacity subquery on ``brokers_poolslot s``) measured on the firm part
    of the slots while :data:`firm_view` is set, else unchanged."""
    return sql.replace(USED_ALL, USED_FIRM) if firm_view.get() else sql
