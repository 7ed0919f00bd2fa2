"""A booking in one round trip: ``broker_book`` (migration 0006) called with a prepared statement.

The service (``services.booking_create``) hands over what it decided in Python (the option, the
window's slots, the event and webhook payload); the function writes the booking, allocations,
event and webhook deliveries and reserves the slots (``brokers.ledger``'s upsert and lock order)
in the same transaction, and answers with the new booking's id, or with the id of the booking
that already holds the idempotency key.

Outside a transaction the whole exchange is one network round trip: ``BEGIN``, the caller's
remaining deadline as ``statement_timeout``, the call and ``COMMIT`` go out together in
psycopg's pipeline mode. Inside a caller's transaction (tests, re-placement) the call runs in a
savepoint and commits with the caller. Deadlocks and serialization failures are retried, each
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
from typing import Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from psycopg.types.json import Jsonb

from brokers import ledger
from brokers.errors import CapacityExhausted, RetryableConflict

BOOK_SQL = (
    "SELECT existing, booking_id, created_at, hold_expires_at, deliveries FROM broker_book("
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s::bigint[], %s::integer[], %s::numeric[], %s::bigint[], %s::integer[], "
    "%s::timestamptz[], %s, %s, %s, %s)"
)
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
    door: str
    idempotency_key: str
    fingerprint: str
    national_id: str
    spec: dict[str, Any]
    status: str
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


def book(request: Request, *, attempts: int = 5) -> Booked:
    """Run ``broker_book``; ``CapacityExhausted`` with the function's reason code,
    ``Unsupported``, ``RetryableConflict`` after ``attempts`` deadlocks or serialization
    failures, ``ledger.DeadlineExceeded`` when the caller's deadline passes."""
    params = request.params()
    for attempt in range(attempts):
        try:
            if connection.in_atomic_block:
                with transaction.atomic():
                    with connection.cursor() as cur:
                        cur.execute(BOOK_SQL, params)
                        row = cur.fetchone()
            else:
                row = _one_round_trip(params)
        except DatabaseError as exc:
            cause = exc.__cause__
            state = getattr(cause, "sqlstate", None)
            if state == "P0001":
                diag = cause.diag  # type: ignore[union-attr]
                if diag.message_hint == UNSUPPORTED:
                    raise Unsupported() from None
                raise CapacityExhausted(
                    diag.message_primary or "Refused.",
                    code=diag.message_hint or "booking.capacity_exceeded",
                ) from None
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


def _one_round_trip(params: list[Any]) -> tuple[Any, ...] | None:
    """BEGIN, statement_timeout, the call and COMMIT in one pipeline (one network round trip);
    on any error the transaction is rolled back."""
    timeout_ms = None
    deadline = ledger.deadline_at.get()
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ledger.DeadlineExceeded("The deadline passed before the booking started.")
        timeout_ms = max(1, int(remaining * 1000))
    global _pipelines
    connection.ensure_connection()
    raw: psycopg.Connection[Any] = connection.connection
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
                control.execute("COMMIT")
            return call.fetchone()
        except BaseException:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    raw.rollback()
                except psycopg.Error:
                    pass
            raise
