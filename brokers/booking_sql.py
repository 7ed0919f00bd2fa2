"""A booking in one round trip: ``broker_book`` (migration 0006) called with a prepared statement.

The service (``services.booking_create``) hands over what it decided in Python (the option, the
window's slots, the event and webhook payload); the function writes the booking, allocations,
event and webhook deliveries and reserves the slots (``brokers.ledger``'s upsert and lock order)
in the same transaction, and answers with the new booking's id, or with the id of the booking
that already holds the idempotency key.

Outside a transaction the whole exchange is one network round trip: ``BEGIN``, the caller's
remaining deadline (less the server's margin, ``registry.context.server_deadline``) as
``statement_timeout``, the call, ``broker_deadline_guard`` (no COMMIT once that time has passed
on the server's clock since BEGIN) and ``COMMIT`` go out together in psycopg's pipeline mode.
Inside a caller's transaction (tests, re-placement) the call runs in a savepoint and commits
with the caller. Deadlocks and serialization failures are retried, each
attempt in a NEW transaction, like ``ledger.in_fresh_transactions``.

PostgreSQL only, and only for firms without a quota row (the function refuses them with
``fast.unsupported``; :class:`Unsupported` sends the service down its Python path, which holds
the quota rules). ``BROKER_BOOK_FUNCTION=0`` turns it off.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import psycopg
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from psycopg.types.json import Jsonb

from brokers import group_commit, ledger
from brokers.choices import BookingStatus
from brokers.errors import CapacityExhausted, RetryableConflict
from registry.choices import Door
from registry.context import deadline_at

BOOK_SQL = (
    "SELECT existing, booking_id, created_at, hold_expires_at, deliveries FROM broker_book("
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s::bigint[], %s::integer[], %s::numeric[], %s::bigint[], %s::integer[], "
    "%s::timestamptz[], %s, %s, %s, %s)"
)
# The last statement before COMMIT: 57014 once the transaction has run for its budget (ms).
GUARD_SQL = "SELECT broker_deadline_guard(%s)"
# Reason codes the function raises (HINT) that are refusals, not faults.
UNSUPPORTED = "fast.unsupported"


_pipelines = 0  # sent by this process (the bench counts round trips with it)


def pipelines_sent() -> int:
    return _pipelines


class Unsupported(Exception):
    """The function does not decide this booking (the firm has a quota): use the Python path."""


@dataclass(frozen=True)
class Booked:
    """What ``broker_book`` answered."""

    existing: bool
    booking_id: int
    created_at: dt.datetime
    hold_expires_at: dt.datetime | None
    deliveries: list[int]


def available() -> bool:
    return connection.vendor == "postgresql" and bool(
        getattr(settings, "BROKER_BOOK_FUNCTION", True)
    )


@dataclass(frozen=True)
class Request:
    """The booking as the service decided it."""

    organization_id: int
    user_id: int | None
    door: Door
    idempotency_key: str
    fingerprint: str
    national_id: str
    spec: dict[str, Any]
    status: BookingStatus
    hold_seconds: float | None
    start: dt.datetime
    end: dt.datetime
    accelerators: int
    cost: Decimal
    currency: str
    # Allocations in the option's order: (pool id, accelerators, price per accelerator-hour).
    allocations: Sequence[tuple[int, int, Decimal | None]]
    message: str
    data: dict[str, Any]
    hook: str
    payload: dict[str, Any]

    def params(self) -> list[Any]:
        merged: dict[int, int] = {}
        for pool_id, n, _ in self.allocations:
            if n < 1:
                raise CapacityExhausted(
                    "Every part needs at least one accelerator.", code="invalid"
                )
            merged[pool_id] = merged.get(pool_id, 0) + n
        pools = sorted(merged)  # the global lock order
        return [
            self.organization_id,
            self.user_id,
            self.door,
            self.idempotency_key,
            self.fingerprint,
            self.national_id,
            Jsonb(self.spec),
            self.status,
            self.hold_seconds,
            self.start,
            self.end,
            self.accelerators,
            self.cost,
            self.currency,
            [a[0] for a in self.allocations],
            [a[1] for a in self.allocations],
            [a[2] for a in self.allocations],
            pools,
            [merged[p] for p in pools],
            ledger.slot_starts(self.start, self.end),
            self.message[:500],
            Jsonb(self.data),
            self.hook,
            Jsonb(self.payload),
        ]


# The index of ``p_pools`` (sorted, the lock order) in ``Request.params()``.
_POOLS = 17


def book(request: Request, *, attempts: int = 5) -> Booked:
    """Run ``broker_book``; ``CapacityExhausted`` with the function's reason code,
    ``Unsupported``, ``RetryableConflict`` after ``attempts`` deadlocks or serialization
    failures, ``ledger.DeadlineExceeded`` when the caller's deadline passes.

    In a broker process with group commit (``brokers.group_commit``) the first attempt goes in
    the process's next batch; a batch that fails is retried here, booking by booking."""
    params = request.params()
    committer = None if connection.in_atomic_block else group_commit.current()
    for attempt in range(attempts):
        try:
            if connection.in_atomic_block:
                with transaction.atomic():
                    with connection.cursor() as cur:
                        cur.execute(BOOK_SQL, params)
                        row = cur.fetchone()
            elif committer is not None:
                row = _in_a_batch(committer, params)
                committer = None  # whatever happens next is retried alone
            else:
                row = _one_round_trip(params)
        except group_commit.BatchFailed:
            committer = None
            continue
        except DatabaseError as exc:
            cause = exc.__cause__
            state = getattr(cause, "sqlstate", None)
            if state == "P0001":
                diag = cause.diag  # type: ignore[union-attr]
                _refuse(diag.message_primary, diag.message_hint)
            if state == ledger.QUERY_CANCELED:
                raise ledger.DeadlineExceeded("The deadline passed while booking.") from exc
            if state not in ledger.RETRYABLE_SQLSTATES or connection.in_atomic_block:
                raise
            time.sleep(random.uniform(0, 0.005 * (2**attempt)))
            continue
        assert row is not None
        return Booked(
            existing=row[0],
            booking_id=row[1],
            created_at=row[2],
            hold_expires_at=row[3],
            deliveries=list(row[4] or ()),
        )
    raise RetryableConflict(f"Gave up after {attempts} conflicting attempts; retry the request.")


def _refuse(message: str | None, hint: str | None) -> NoReturn:
    """A refusal raised by ``broker_book`` (``P0001``, the reason code in the HINT)."""
    if hint == UNSUPPORTED:
        raise Unsupported() from None
    raise CapacityExhausted(
        message or "Refused.", code=hint or "booking.capacity_exceeded"
    ) from None


def _in_a_batch(committer: group_commit.GroupCommitter, params: list[Any]) -> tuple[Any, ...]:
    """The booking in the committer's next batch; answered once that batch committed. A refusal
    or integrity violation of this booking alone (its savepoint rolled back) is raised as the
    single-transaction path raises it."""
    deadline = deadline_at.get()
    if deadline is not None and deadline <= time.monotonic():
        raise ledger.DeadlineExceeded("The deadline passed before the booking started.")
    global _pipelines
    _pipelines += 1
    try:
        row = committer.submit(params, params[_POOLS], deadline)
    except group_commit.Expired:
        raise ledger.DeadlineExceeded("The deadline passed before the booking started.") from None
    state, message, hint = row[5], row[6], row[7]
    if state is None:
        return tuple(row[:5])
    if state == "P0001":
        _refuse(message, hint)
    # Class 23 (the slots' CHECK constraint, a booking id collision): what Django raises.
    raise IntegrityError(f"{message} (SQLSTATE {state})")


def _one_round_trip(params: list[Any]) -> tuple[Any, ...] | None:
    """BEGIN, statement_timeout, the call, the deadline guard and COMMIT in one pipeline (one
    network round trip); on any error the transaction is rolled back."""
    global _pipelines
    connection.ensure_connection()
    raw: psycopg.Connection[Any] = connection.connection
    # Read last, just before sending: also a retry after a failed batch is never sent once its
    # deadline has passed, and is bounded by what remains of it.
    timeout_ms = ledger.budget_ms()
    _pipelines += 1
    with connection.wrap_database_errors:
        try:
            with raw.pipeline():
                control = psycopg.Cursor(raw)
                control.execute("BEGIN")
                if timeout_ms is not None:
                    control.execute(
                        "SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)]
                    )
                # Server-side binding: psycopg prepares the statement after a few calls.
                call = psycopg.Cursor(raw)
                call.execute(BOOK_SQL, params)
                if timeout_ms is not None:
                    # No COMMIT once the budget is spent on the server's clock (migration 0010).
                    control.execute(GUARD_SQL, [timeout_ms])
                control.execute("COMMIT")
            return call.fetchone()
        except BaseException:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    raw.rollback()
                except psycopg.Error:
                    pass
            raise
