"""Group commit in one broker process: bookings that share a transaction stay independent.

A real broker (``build_server``, group commit on) on loopback, real PostgreSQL. A batch is
forced by holding a pool's row lock: the first booking's batch waits on it, the others queue
behind it and leave together once it is released. Then: refusals inside a batch do not touch
the others; a batch whose connection is killed answers no booking that did not commit; the
pools of a batch are locked in the global order, so batches never deadlock each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from django.db import connection, connections, transaction

from brokers import group_commit, ledger
from brokers.client.client import BrokerClient, workload_spec
from brokers.models import Booking, PoolSlot
from brokers.rpc.server import BrokerRuntime, build_server
from registry import services as registry_services
from tests.brokers.broker_testing import PoolLock
from tests.brokers.conftest import next_hour
from tests.harness.oversell import sweep

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker(settings: Any, request: pytest.FixtureRequest) -> Iterator[BrokerRuntime]:
    settings.BROKER_GROUP_COMMIT = True
    # Batches in flight at once (parametrized through the fixture; 1 unless asked).
    settings.BROKER_GROUP_COMMIT_FLIGHTS = getattr(request, "param", 1)
    runtime = build_server("127.0.0.1:0", max_workers=16)
    assert group_commit.current() is not None
    yield runtime
    runtime.stop(grace=0).wait()


@pytest.fixture
def client_for(broker: BrokerRuntime) -> Iterator[Callable[[Any], BrokerClient]]:
    opened: list[BrokerClient] = []

    def make(user: Any) -> BrokerClient:
        _, token = registry_services.token_create(user=user, name="group commit")
        client = BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=20)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def a100(count: int) -> Any:
    return workload_spec(
        accelerator_model="nvidia-a100-80g", count=count, earliest_start=next_hour()
    )


# How the committer's statements start (group_commit.GUARDED_SQL): no other query does.
BATCH_QUERY = group_commit.GUARDED_SQL[:60].replace("%", "") + "%"


def _batch_waiting_on_lock() -> int | None:
    """The committer's backend, inside a batch and waiting on a lock, if any."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND pid <> pg_backend_pid()",
            [BATCH_QUERY],
        )
        row = cur.fetchone()
    return None if row is None else int(row[0])


def _batch_blocked_by(lock: PoolLock) -> int | None:
    """A batch (``broker_book_guarded``) waiting on ``lock``'s row, if any: its backend."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND %s = ANY(pg_blocking_pids(pid))",
            ["%broker_book_guarded(%", lock.pid],
        )
        row = cur.fetchone()
    return None if row is None else int(row[0])


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Outcomes:
    """Each idempotency key's answer: a booking id, a refusal, or another gRPC error."""

    def __init__(self) -> None:
        self.booked: dict[str, str] = {}
        self.refused: set[str] = set()
        self.errors: dict[str, str] = {}
        self.lock = threading.Lock()

    def book(self, client: BrokerClient, key: str, pool: str, n: int) -> None:
        try:
            booking = client.book(a100(n), idempotency_key=key, option=[(pool, n)])
        except grpc.RpcError as exc:
            with self.lock:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.refused.add(key)
                else:
                    self.errors[key] = exc.code().name
            return
        with self.lock:
            self.booked[key] = booking.booking_id


def _queued_behind_a_blocked_batch(
    client: BrokerClient, outcomes: Outcomes, blocker: Any, requests: list[tuple[str, str, int]]
) -> list[threading.Thread]:
    """One booking of ``blocker`` in a batch waiting on its row lock, then ``requests`` queued
    at the committer behind it."""
    committer = group_commit.current()
    assert committer is not None
    first = threading.Thread(target=outcomes.book, args=(client, "blocked", blocker.national_id, 1))
    first.start()
    _wait_for(_batch_waiting_on_lock, "the first batch on the lock")
    threads = [
        threading.Thread(target=outcomes.book, args=(client, key, pool, n))
        for key, pool, n in requests
    ]
    for t in threads:
        t.start()
    _wait_for(lambda: committer._queue.qsize() >= len(requests), "the bookings to queue")
    return [first, *threads]


def _check_committed(outcomes: Outcomes) -> None:
    """Every booking answered is committed under its key; no refused key holds a booking; no
    pool is oversold, by allocations or by slot counters."""
    rows = dict(
        Booking.objects.filter(
            idempotency_key__in=[*outcomes.booked, *outcomes.refused]
        ).values_list("idempotency_key", "national_id")
    )
    for key, booking_id in outcomes.booked.items():
        assert rows.get(key) == booking_id, f"{key} answered {booking_id} but {rows.get(key)}"
    assert not outcomes.refused & set(rows), "a refused booking was committed"
    assert ledger.oversold_pools() == {}
    connection.ensure_connection()
    assert sweep(connection.connection) == {}


def test_refusals_inside_a_batch_leave_the_others_booked(
    dave: Any, acme: Any, active_pool: Any, client_for: Any
) -> None:
    blocker = active_pool(acme, size=8)
    full_a, ok_a, ok_b, full_b, ok_c = (active_pool(acme, size=8) for _ in range(5))
    client = client_for(dave)
    for pool in (full_a, full_b):  # each full for the hour: the next booking is refused
        client.book(a100(8), idempotency_key=f"fill-{pool.pk}", option=[(pool.national_id, 8)])
    committer = group_commit.current()
    assert committer is not None
    before = committer.stats.largest
    outcomes = Outcomes()
    requests = [
        ("refused-a", full_a.national_id, 1),
        ("ok-a", ok_a.national_id, 2),
        ("ok-b", ok_b.national_id, 3),
        ("refused-b", full_b.national_id, 4),
        ("ok-c", ok_c.national_id, 8),
    ]
    with PoolLock(blocker.pk):
        threads = _queued_behind_a_blocked_batch(client, outcomes, blocker, requests)
    for t in threads:
        t.join(30)

    # The five left in one batch (distinct pools: disjoint, in ascending order).
    assert committer.stats.largest >= 5 > before
    assert outcomes.refused == {"refused-a", "refused-b"}
    assert set(outcomes.booked) == {"blocked", "ok-a", "ok-b", "ok-c"} and not outcomes.errors
    _check_committed(outcomes)
    # The refused bookings' savepoints rolled back their slots; the others' slots are held.
    hour = next_hour()
    reserved = dict(PoolSlot.objects.filter(slot_start=hour).values_list("pool_id", "reserved"))
    assert reserved == {
        blocker.pk: 1,
        full_a.pk: 8,
        full_b.pk: 8,
        ok_a.pk: 2,
        ok_b.pk: 3,
        ok_c.pk: 8,
    }


def test_a_connection_killed_mid_batch_answers_no_uncommitted_booking(
    dave: Any, acme: Any, active_pool: Any, client_for: Any
) -> None:
    blocker = active_pool(acme, size=8)
    pools = [active_pool(acme, size=8) for _ in range(4)]
    client = client_for(dave)
    committer = group_commit.current()
    assert committer is not None
    outcomes = Outcomes()
    requests = [(f"k{i}", pools[i % 4].national_id, 3) for i in range(8)]  # 2 x 3 fit in 8
    with PoolLock(blocker.pk):
        threads = _queued_behind_a_blocked_batch(client, outcomes, blocker, requests)
        pid = _batch_waiting_on_lock()
        with connection.cursor() as cur:  # the committer's connection dies mid-batch
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
        _wait_for(lambda: committer.stats.failed_batches >= 1, "the batch to fail")
    for t in threads:
        t.join(30)

    assert committer.stats.failed_batches >= 1
    # Retried alone, the blocked booking got through; nobody was answered a lost booking.
    assert outcomes.booked.get("blocked")
    assert len(outcomes.booked) + len(outcomes.refused) + len(outcomes.errors) == 9
    assert len(outcomes.booked) == 9, (outcomes.refused, outcomes.errors)
    _check_committed(outcomes)

    # A storm: 8 clients booking 3 of 8 on four pools while the committer's connection is
    # killed over and over. Errors are allowed; an answered booking that is not there is not.
    storm = Outcomes()
    stop = threading.Event()

    def killer() -> None:
        try:
            while not stop.is_set():
                with connection.cursor() as cur:
                    # Only while a batch runs: an idle connection shows its last COMMIT.
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                        [BATCH_QUERY],
                    )
                time.sleep(0.03)
        finally:
            connections.close_all()

    def worker(w: int) -> None:
        for i in range(6):
            storm.book(client, f"s{w}-{i}", pools[(w + i) % 4].national_id, 1)

    kill = threading.Thread(target=killer)
    kill.start()
    workers = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    kill.join(10)
    assert storm.booked, "nothing got through the storm"
    _check_committed(storm)


@pytest.mark.parametrize("broker", [1, 2], indirect=True, ids=["1 in flight", "2 in flight"])
def test_batches_keep_the_global_lock_order(
    dave: Any, acme: Any, active_pool: Any, client_for: Any
) -> None:
    """Batches of one-pool bookings through gRPC while other transactions (in process, not
    batched) book two-pool options on the same pools, with one and with two batches in flight
    per process: a batch that took its pools out of ascending order would deadlock with them.
    None surfaces, none is even broken by PostgreSQL and retried, nothing is oversold."""
    from brokers import services
    from registry.choices import Door
    from tests.brokers.conftest import spec

    pools = sorted((active_pool(acme, size=64) for _ in range(6)), key=lambda p: p.pk)
    client = client_for(dave)
    committer = group_commit.current()
    assert committer is not None
    outcomes = Outcomes()
    deadlocks_before = _deadlocks()

    def through_grpc(w: int) -> None:
        for i in range(10):
            outcomes.book(client, f"g{w}-{i}", pools[(w + i) % 6].national_id, 1)

    def in_process(w: int) -> None:
        try:
            for i in range(10):
                a, b = pools[(w + i) % 6], pools[(w + i + 3) % 6]
                key = f"p{w}-{i}"
                try:
                    with transaction.atomic():  # its own transaction, never batched
                        booking = services.booking_create(
                            spec=spec(
                                count=2,
                                earliest_start=next_hour(),
                                allow_split=True,
                                max_centers=2,
                            ),
                            idempotency_key=key,
                            actor=dave,
                            door=Door.BROKER,
                            option=[(a.national_id, 1), (b.national_id, 1)],
                        )
                except Exception as exc:
                    with outcomes.lock:
                        outcomes.errors[key] = type(exc).__name__
                    continue
                with outcomes.lock:
                    outcomes.booked[key] = booking.national_id
        finally:
            connections.close_all()

    workers = [threading.Thread(target=through_grpc, args=(w,)) for w in range(8)]
    workers += [threading.Thread(target=in_process, args=(w,)) for w in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(90)
    assert not outcomes.errors
    assert len(outcomes.booked) == 120
    _check_committed(outcomes)
    assert committer.stats.largest > 1  # batches did form
    # Not even hidden by the retries: no batch failed, PostgreSQL broke no deadlock.
    assert committer.stats.failed_batches == 0
    assert _deadlocks() == deadlocks_before


def _deadlocks() -> int:
    time.sleep(1.0)  # the backends report their statistics within a second
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        row = cur.fetchone()
    return int(row[0])


def test_a_deadline_in_a_batch_cancels_nothing_after_it_but_books_the_others(
    dave: Any, acme: Any, active_pool: Any, client_for: Any
) -> None:
    """A batch waits no longer than its earliest deadline: the booking whose caller gave up is
    never committed (as alone: the server gives up with the caller), the other one of its batch
    is booked on its own."""
    gate, slow, free = (active_pool(acme, size=8) for _ in range(3))
    client = client_for(dave)
    committer = group_commit.current()
    assert committer is not None
    outcomes = Outcomes()
    answers: dict[str, str] = {}

    def short() -> None:
        try:
            client.book(a100(1), idempotency_key="short", option=[(slow.national_id, 1)], timeout=3)
        except grpc.RpcError as exc:
            answers["short"] = exc.code().name

    with PoolLock(slow.pk):
        with PoolLock(gate.pk):
            first = threading.Thread(
                target=outcomes.book, args=(client, "gate", gate.national_id, 1)
            )
            first.start()
            _wait_for(_batch_waiting_on_lock, "the first batch on the lock")
            threads = [
                threading.Thread(target=short),
                threading.Thread(target=outcomes.book, args=(client, "long", free.national_id, 1)),
            ]
            for t in threads:
                t.start()
            _wait_for(lambda: committer._queue.qsize() >= 2, "both to queue")
        # The gate's batch commits; the next one (short, long) waits on the slow pool's lock.
        for t in [first, *threads]:
            t.join(30)
        failed = committer.stats.failed_batches
    assert answers == {"short": "DEADLINE_EXCEEDED"}
    assert set(outcomes.booked) == {"gate", "long"} and not outcomes.errors
    assert failed >= 1  # cancelled at the short deadline, retried booking by booking
    time.sleep(0.5)  # the lock is gone: a batch still running would commit now
    assert not Booking.objects.filter(idempotency_key="short").exists()
    _check_committed(outcomes)


# --- deadlines: nothing commits after its caller was told DEADLINE_EXCEEDED -----------------


def _book_with_timeout(
    client: BrokerClient, answers: dict[str, str], key: str, pool: Any, timeout: float
) -> None:
    """Book one accelerator of ``pool``; ``answers[key]`` is the booking id or the error code."""
    try:
        booking = client.book(
            a100(1), idempotency_key=key, option=[(pool.national_id, 1)], timeout=timeout
        )
    except grpc.RpcError as exc:
        answers[key] = exc.code().name
    else:
        answers[key] = booking.booking_id


def _wait_for_answer(answers: dict[str, str], key: str) -> str:
    return str(_wait_for(lambda: answers.get(key), f"the answer to {key}", timeout=30))


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "mutation: no guard"])
def test_a_later_booking_of_the_batch_cannot_carry_it_past_the_earliest_deadline(
    dave: Any,
    acme: Any,
    active_pool: Any,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
    guarded: bool,
) -> None:
    """A batch of ``early`` (1.5 s) and ``late`` (20 s), each waiting on a row lock. The first
    lock is released 0.4 s in; ``late``'s statement then starts and waits with a statement
    timeout of its own, which PostgreSQL restarts for every statement: it would still be
    waiting when ``early``'s caller is told DEADLINE_EXCEEDED. The test releases the second
    lock only then. The deadline guard before COMMIT must abort the batch (``early`` is never
    committed; ``late`` is booked on its own). Mutation control: without the guard the batch
    commits ``early`` after its caller gave up."""
    if not guarded:
        monkeypatch.setattr(group_commit, "GUARD_SQL", "SELECT %s::integer")
    gate, first, second = sorted((active_pool(acme, size=8) for _ in range(3)), key=lambda p: p.pk)
    client = client_for(dave)
    committer = group_commit.current()
    assert committer is not None
    answers: dict[str, str] = {}
    threads: list[threading.Thread] = []

    def book(key: str, pool: Any, timeout: float) -> None:
        thread = threading.Thread(
            target=_book_with_timeout, args=(client, answers, key, pool, timeout)
        )
        thread.start()
        threads.append(thread)

    with PoolLock(second.pk) as second_lock, PoolLock(first.pk) as first_lock:
        with PoolLock(gate.pk) as gate_lock:
            book("gate", gate, 20)
            _wait_for(lambda: _batch_blocked_by(gate_lock), "the gate's batch on its lock")
            book("early", first, 1.5)  # first in the batch: the lower pool id
            book("late", second, 20)
            _wait_for(lambda: committer._queue.qsize() >= 2, "both to queue")
        assert _wait_for_answer(answers, "gate") not in ("DEADLINE_EXCEEDED", "")
        _wait_for(lambda: _batch_blocked_by(first_lock), "the batch on the first lock")
        time.sleep(0.4)
        first_lock.release.set()  # early's statement ends; late's starts and waits
        assert _wait_for_answer(answers, "early") == "DEADLINE_EXCEEDED"
        second_lock.release.set()  # right after early's caller was told
        for thread in threads:
            thread.join(30)
    time.sleep(0.3)  # anything still running would have committed by now
    early = Booking.objects.filter(idempotency_key="early").exists()
    if not guarded:
        assert early, "the mutation control no longer commits past the deadline"
        return
    assert not early
    assert answers["late"] not in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
    assert Booking.objects.filter(idempotency_key="late").exists()
    assert committer.stats.failed_batches >= 1


# The request's transit: the server's clock starts the call's deadline this much later than
# the caller's (half the default safety margin).
SKEW = ledger.DEFAULT_DEADLINE_MARGIN_SECONDS / 2


@pytest.mark.parametrize("margin", [True, False], ids=["margin", "mutation: no margin"])
def test_a_retry_alone_after_a_cancelled_batch_never_commits_past_its_deadline(
    dave: Any,
    acme: Any,
    active_pool: Any,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    margin: bool,
) -> None:
    """A batch of ``short`` (1 s) and ``long`` (2 s) waits on two row locks; it is cancelled
    at ``short``'s deadline and both retry alone: ``short``'s deadline has passed (not sent),
    ``long`` waits on its lock with what remains of its deadline. Each call arrives ``SKEW``
    after its caller started it (the server's deadline is that much later than the caller's).
    The test releases the locks the moment ``long``'s caller is told DEADLINE_EXCEEDED: the
    server must have given up already, so neither is committed. Mutation control: without the
    safety margin the retry of ``long`` is still waiting then, and commits."""
    from rpckit.aio import CallContext

    settings.BROKER_DEADLINE_MARGIN_SECONDS = (
        ledger.DEFAULT_DEADLINE_MARGIN_SECONDS if margin else 0.0
    )
    arrived = CallContext.time_remaining

    def later(self: CallContext) -> float | None:
        remaining = arrived(self)
        return None if remaining is None else remaining + SKEW

    monkeypatch.setattr(CallContext, "time_remaining", later)
    gate, first, second = sorted((active_pool(acme, size=8) for _ in range(3)), key=lambda p: p.pk)
    client = client_for(dave)
    committer = group_commit.current()
    assert committer is not None
    answers: dict[str, str] = {}
    threads: list[threading.Thread] = []

    def book(key: str, pool: Any, timeout: float) -> None:
        thread = threading.Thread(
            target=_book_with_timeout, args=(client, answers, key, pool, timeout)
        )
        thread.start()
        threads.append(thread)

    with PoolLock(second.pk) as second_lock, PoolLock(first.pk) as first_lock:
        with PoolLock(gate.pk) as gate_lock:
            book("gate", gate, 20)
            _wait_for(lambda: _batch_blocked_by(gate_lock), "the gate's batch on its lock")
            book("short", first, 1.0)
            book("long", second, 2.0)
            _wait_for(lambda: committer._queue.qsize() >= 2, "both to queue")
        failed = committer.stats.failed_batches
        assert _wait_for_answer(answers, "short") == "DEADLINE_EXCEEDED"
        assert _wait_for_answer(answers, "long") == "DEADLINE_EXCEEDED"
        second_lock.release.set()
        first_lock.release.set()
        for thread in threads:
            thread.join(30)
    time.sleep(0.3)  # anything still running would have committed by now
    assert committer.stats.failed_batches > failed  # the batch was cancelled, then retried
    long_committed = Booking.objects.filter(idempotency_key="long").exists()
    assert not Booking.objects.filter(idempotency_key="short").exists()
    if not margin:
        assert long_committed, "the mutation control no longer commits past the deadline"
        return
    assert not long_committed
