"""Group commit: the concurrent bookings of one broker process share one transaction.

Each ``Book`` runs in a worker thread of the broker (``brokers.rpc.server``). Without group
commit every booking is its own transaction, and PostgreSQL flushes its WAL (an fsync) once per
booking. With it, the worker hands its ``broker_book`` call to the process's committer thread
and waits. The committer takes every booking waiting at that moment (up to
``BROKER_GROUP_COMMIT_MAX``) and sends, in one network round trip (psycopg's pipeline mode):
``BEGIN``, the batch's ``statement_timeout``, one ``broker_book_guarded(...)`` per booking and
``COMMIT``. ``broker_book_guarded`` (migration 0009) runs each booking in a savepoint of its own,
so a refusal or an integrity violation (the slots' CHECK constraint stays the final guard) rolls
back that booking only. Every caller gets its answer after the COMMIT succeeded, never before.
While one batch is on the wire the next one gathers, so a batch grows with the load and costs a
lone booking nothing but a thread hand-off.

Lock order. A booking locks its pools in ascending id order (``brokers.ledger``), and a
transaction keeps its locks until it ends; a batch holding the locks of several bookings must
therefore take them in ascending order too, or two batches (or a batch and a lone transaction)
could wait on each other. A batch only ever holds bookings whose pool ranges ``[lowest,
highest]`` are disjoint, sent in ascending order: the whole batch then locks pools in strictly
ascending order, like one booking. A booking that overlaps one already taken waits for the next
batch (the oldest waiting booking is always taken, so none starves).

Failures. A deadlock, a serialization failure, a statement cancelled by the deadline or a lost
connection aborts the whole batch: nothing of it committed, or (a connection lost during the
COMMIT) perhaps all of it. Each of its callers then books on its own (``booking_sql``'s
single-transaction path with its retries); the idempotency key makes that safe either way: a
booking that did commit answers as the stored booking. Deadlines: a booking whose deadline has
passed before its batch leaves is answered ``DeadlineExceeded`` and never sent; the batch's
budget is the earliest deadline among its bookings (each deadline already less the server's
safety margin, ``registry.context.server_deadline``): it is the ``statement_timeout`` of every
statement, and ``broker_deadline_guard``, the last statement before ``COMMIT``, aborts the batch
once the budget has passed since its ``BEGIN`` (the statement timeout restarts with each
booking's statement and would not). So, as alone, no booking commits after its caller gave up: a
batch cancelled at one booking's deadline is retried booking by booking, each retry checking its
own remaining deadline before it is sent and bounded by it (the late one gets
``DeadlineExceeded`` without being sent).

``BROKER_GROUP_COMMIT_FLIGHTS`` committer threads (each with its own connection) let that many
batches leave at once; one forms its batch at a time. ``BROKER_GROUP_COMMIT=0`` turns group
commit off: every booking is its own transaction again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connection, connections

logger = logging.getLogger(__name__)

GUARDED_SQL = (
    "SELECT existing, booking_id, created_at, hold_expires_at, deliveries, error_state, "
    "error_message, error_hint FROM broker_book_guarded("
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s::bigint[], %s::integer[], %s::numeric[], %s::bigint[], %s::integer[], "
    "%s::timestamptz[], %s, %s, %s, %s)"
)


# The last statement before COMMIT (migration 0010): 57014 once the batch ran for its budget.
GUARD_SQL = "SELECT broker_deadline_guard(%s)"


class BatchFailed(Exception):
    """The batch this booking was in aborted (nothing of it committed, or its outcome is
    unknown): book it on its own, with the same idempotency key."""


class Expired(Exception):
    """The booking's deadline passed before its batch left; it was not sent."""


@dataclass
class _Waiting:
    params: Sequence[Any]
    low: int
    high: int
    deadline: float | None
    answer: Future[tuple[Any, ...]] = field(default_factory=Future)


@dataclass
class Stats:
    """What this process's committer did (tests and the bench read it)."""

    batches: int = 0
    bookings: int = 0
    largest: int = 0
    failed_batches: int = 0


class GroupCommitter:
    """One committer thread with its own database connection, per broker process."""

    def __init__(self, max_batch: int, flights: int = 1) -> None:
        self.max_batch = max(1, max_batch)
        self.stats = Stats()
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._carried: list[_Waiting] = []
        self._stopping = False
        # Orders every put before the stop sentinel: the thread answers all that came before.
        self._put_lock = threading.Lock()
        # One thread (and connection) per batch in flight; one of them forms a batch at a time.
        self._form_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"group-commit-{i}", daemon=True)
            for i in range(max(1, flights))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, params: Sequence[Any], pools: Sequence[int], deadline: float | None) -> Any:
        """Book in the next batch and wait for its COMMIT: the row of ``broker_book_guarded``.
        ``BatchFailed`` or ``Expired`` otherwise."""
        waiting = _Waiting(params, min(pools), max(pools), deadline)
        with self._put_lock:
            if self._stopping:
                raise BatchFailed("the committer is stopping")
            self._queue.put(waiting)
        return waiting.answer.result()

    def stop(self) -> None:
        with self._put_lock:
            self._stopping = True
            self._queue.put(None)
        for thread in self._threads:
            thread.join(30)

    # --- the committer thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._form_lock:
                    batch = self._next_batch()
                if batch is None:
                    break
                if batch:
                    self._commit(batch)
        finally:
            # Whoever still waits books on their own.
            with self._form_lock:
                for waiting in self._carried + self._drain():
                    if not waiting.answer.done():
                        waiting.answer.set_exception(BatchFailed("the committer stopped"))
                self._carried = []
            connections.close_all()

    def _drain(self) -> list[_Waiting]:
        out: list[_Waiting] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(item)

    def _next_batch(self) -> list[_Waiting] | None:
        """The bookings of the next batch, in lock order; None once stopped."""
        if self._stopping:
            return None
        if not self._carried:
            first = self._queue.get()  # wait for work
            if first is None:
                return None
            self._carried.append(first)
        self._carried += self._drain()
        if self._stopping:
            return None
        now = time.monotonic()
        taken: list[_Waiting] = []
        left: list[_Waiting] = []
        for waiting in self._carried:  # oldest first: the oldest is always taken
            if waiting.deadline is not None and waiting.deadline <= now:
                waiting.answer.set_exception(Expired())
            elif len(taken) < self.max_batch and all(
                waiting.high < t.low or waiting.low > t.high for t in taken
            ):
                taken.append(waiting)
            else:
                left.append(waiting)
        self._carried = left
        # Disjoint pool ranges in ascending order: the batch locks pools in ascending order.
        taken.sort(key=lambda w: w.low)
        return taken

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            rows = self._send(batch)
        except Exception as exc:
            with self._stats_lock:
                self.stats.failed_batches += 1
            logger.info(
                "group commit of %d bookings failed (%s); each retries alone", len(batch), exc
            )
            if connection.connection is not None and (
                connection.connection.closed or not connection.is_usable()
            ):
                connection.close()
            for waiting in batch:
                waiting.answer.set_exception(BatchFailed(str(exc)))
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.bookings += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
        for waiting, row in zip(batch, rows, strict=True):
            waiting.answer.set_result(row)

    def _send(self, batch: list[_Waiting]) -> list[Any]:
        """BEGIN, the timeout, one guarded call per booking, the deadline guard and COMMIT in
        one pipeline; on any error the transaction is rolled back and the error raised.

        The budget is the earliest deadline of the batch, read just before sending.
        ``statement_timeout`` alone would not hold it: its clock restarts with every booking's
        statement, so a batch of several could run past the earliest deadline (a later
        booking waiting on a lock for the whole budget again). ``broker_deadline_guard``,
        the last statement before COMMIT, refuses to let the transaction commit once the
        budget has passed since its BEGIN, on the server's clock."""
        connection.ensure_connection()
        raw: psycopg.Connection[Any] = connection.connection
        deadlines = [w.deadline for w in batch if w.deadline is not None]
        timeout_ms = None
        if deadlines:  # the earliest: nothing commits after any of its callers gave up
            timeout_ms = max(1, int((min(deadlines) - time.monotonic()) * 1000))
        try:
            with raw.pipeline():
                control = psycopg.Cursor(raw)
                control.execute("BEGIN")
                if timeout_ms is not None:
                    control.execute(
                        "SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)]
                    )
                calls = []
                for waiting in batch:
                    call = psycopg.Cursor(raw)
                    call.execute(GUARDED_SQL, waiting.params)
                    calls.append(call)
                if timeout_ms is not None:
                    control.execute(GUARD_SQL, [timeout_ms])
                control.execute("COMMIT")
            return [call.fetchone() for call in calls]
        except BaseException:
            if not raw.closed and raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    raw.rollback()
                except psycopg.Error:
                    pass
            raise


_committer: GroupCommitter | None = None
_users = 0
_lock = threading.Lock()


def start(max_batch: int, flights: int = 1) -> None:
    """Start this process's committer (once per process, after any fork; counted)."""
    global _committer, _users
    with _lock:
        _users += 1
        if _committer is None:
            _committer = GroupCommitter(max_batch, flights)


def stop() -> Stats | None:
    """Stop the committer when its last user stops (its stats returned); waiting bookings then
    book alone."""
    global _committer, _users
    with _lock:
        _users = max(0, _users - 1)
        committer = _committer if _users == 0 else None
        if committer is not None:
            _committer = None
    if committer is None:
        return None
    committer.stop()
    return committer.stats


def current() -> GroupCommitter | None:
    """This process's committer, or None (group commit off, or not a broker process)."""
    return _committer
