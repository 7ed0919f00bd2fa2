"""The dispatch relay (``dispatch_due_bookings``): the scheduler and the outbox relay of booking
dispatch at once. No message waits with a long ETA; a dispatch message lost at commit is
recovered by the next relay run; two relays at once never claim a booking twice."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from celery.app.task import Task
from celery.exceptions import SoftTimeLimitExceeded
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from brokers import dispatch, services, tasks
from brokers.choices import BookingStatus, EventKind
from brokers.models import Booking
from protos import agent_pb2, agent_pb2_grpc
from registry.choices import Door
from tests.brokers.broker_testing import celery_worker, wait_for
from tests.brokers.conftest import next_hour, spec


def _book_now(dave: Any, key: str, **kwargs: Any) -> Booking:
    return services.booking_create(
        spec=spec(earliest_start=timezone.now(), **kwargs),
        idempotency_key=key,
        actor=dave,
        door=Door.API,
    )


def _dispatching_events(booking: Booking) -> int:
    return booking.events.filter(kind=EventKind.STATUS, status=BookingStatus.DISPATCHING).count()


class FakeAgent(agent_pb2_grpc.AgentServicer):
    """An agent on loopback that counts ``StartWorkload`` calls; workloads succeed at once."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.server = grpc.server(ThreadPoolExecutor(4))
        agent_pb2_grpc.add_AgentServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def GetInventory(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC API)
        return agent_pb2.GetInventoryResponse(
            pools=[agent_pb2.InventoryPool(pool_key="a100", accelerator_model="nvidia-a100-80g")]
        )

    def StartWorkload(self, request: Any, context: Any) -> Any:  # noqa: N802
        created = request.workload_id not in self.started
        self.started.append(request.workload_id)
        return agent_pb2.StartWorkloadResponse(
            workload=agent_pb2.Workload(workload_id=request.workload_id), created=created
        )

    def GetWorkload(self, request: Any, context: Any) -> Any:  # noqa: N802
        workload = agent_pb2.Workload(
            workload_id=request.workload_id, state=agent_pb2.WORKLOAD_STATE_SUCCEEDED
        )
        now = timezone.now()
        workload.started_at.FromDatetime(now - dt.timedelta(seconds=1))
        workload.finished_at.FromDatetime(now)
        return agent_pb2.GetWorkloadResponse(workload=workload)

    def StopWorkload(self, request: Any, context: Any) -> Any:  # noqa: N802
        return agent_pb2.StopWorkloadResponse()


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    agent = FakeAgent()
    yield agent
    agent.server.stop(grace=0).wait()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every task message this process publishes, recorded instead of sent."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(self: Task, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        sent.append((self.name, {"args": tuple(args or ()), **options}))

    monkeypatch.setattr(Task, "apply_async", record)
    return sent


@pytest.mark.django_db(transaction=True)
def test_no_dispatch_message_waits_with_a_long_eta(
    settings: Any, dave: Any, acme: Any, active_pool: Any, published: list[Any]
) -> None:
    settings.BROKER_DISPATCH = True
    active_pool(acme, size=16)
    later = services.booking_create(
        spec=spec(count=4), idempotency_key="later", actor=dave, door=Door.API
    )
    assert later.window_start >= next_hour() - dt.timedelta(seconds=1)
    # Redis redelivers an unacknowledged ETA message every visibility timeout (an hour): a
    # booking an hour or a year ahead must not sit in the queue; the relay starts it when due.
    # Only the hold at its centers goes now, at once (a Slurm center reserves the window).
    assert [name for name, _ in published] == ["brokers.tasks.booking_holds"]
    published.clear()
    _book_now(dave, "now")
    assert [name for name, _ in published] == [
        "brokers.tasks.booking_holds",
        "brokers.tasks.dispatch_due_bookings",
    ]
    assert all(
        "eta" not in options and options.get("countdown", 0) <= 10 for _, options in published
    )


@pytest.mark.django_db(transaction=True)
def test_two_relays_at_once_claim_every_due_booking_exactly_once(
    dave: Any, acme: Any, active_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    active_pool(acme, size=64)
    due = [_book_now(dave, f"due-{i}", count=2).pk for i in range(12)]
    future = services.booking_create(
        spec=spec(count=2), idempotency_key="future", actor=dave, door=Door.API
    )
    # A claimed booking whose dispatch message was lost before any workload started.
    lost = _book_now(dave, "lost", count=2)
    assert dispatch.relay(limit=1) == [due[0]]  # claims the earliest due booking first
    Booking.objects.filter(pk__in=[due[0], lost.pk]).update(
        status=BookingStatus.DISPATCHING,
        updated_at=timezone.now() - dt.timedelta(seconds=services.DISPATCH_STALE_SECONDS + 5),
    )

    # Both relays read the same due list before either claims (the race the claim must win).
    listed = threading.Barrier(2, timeout=30)
    original = services.bookings_due_for_dispatch

    def list_then_wait(*, limit: int) -> tuple[list[int], list[int]]:
        found = original(limit=limit)
        listed.wait()
        return found

    monkeypatch.setattr(services, "bookings_due_for_dispatch", list_then_wait)
    claimed: dict[str, list[int]] = {}

    def run(name: str) -> None:
        try:
            claimed[name] = dispatch.relay()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    a, b = claimed["a"], claimed["b"]
    assert not set(a) & set(b), "a booking was claimed by both relays"
    assert sorted(a + b) == sorted([*due, lost.pk])
    assert future.pk not in a + b
    for booking in Booking.objects.filter(pk__in=due[1:]):
        assert booking.status == BookingStatus.DISPATCHING
        assert _dispatching_events(booking) == 1
    # Once claimed, a booking is not claimed again while its dispatch is fresh.
    monkeypatch.setattr(services, "bookings_due_for_dispatch", original)
    assert dispatch.relay() == []
    future.refresh_from_db()
    assert future.status == BookingStatus.CONFIRMED


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_dispatch_message_starts_nothing_twice(
    dave: Any, acme: Any, active_pool: Any, fake_agent: FakeAgent
) -> None:
    pool = active_pool(acme, size=8)
    pool.center.agent_endpoint = f"127.0.0.1:{fake_agent.port}"
    pool.center.save()
    booking = _book_now(dave, "dup")
    # An old-style message for a confirmed booking, delivered twice at once.
    outcomes: list[str] = []

    def run() -> None:
        try:
            outcomes.append(dispatch.dispatch(booking.pk).value)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    booking.refresh_from_db()
    assert sorted(outcomes) == ["done", "gone"]
    assert booking.status == BookingStatus.FINISHED
    assert len(fake_agent.started) == 1
    assert _dispatching_events(booking) == 1
    assert booking.events.filter(kind=EventKind.DISPATCHED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_relay_redelivered_after_dying_between_claim_and_send_sends_its_claims_again(
    dave: Any, acme: Any, active_pool: Any, published: list[tuple[str, dict[str, Any]]]
) -> None:
    active_pool(acme, size=16)
    booked = sorted(_book_now(dave, f"relay-{i}", count=2).pk for i in range(3))

    def dispatches() -> list[int]:
        sent = sorted(o["args"][0] for name, o in published if name.endswith("booking_dispatch"))
        published.clear()
        return sent

    # The relay task claims the three (committed), then its worker is SIGKILLed before the
    # messages leave: here they are recorded and dropped, as the dead worker's would be.
    tasks.dispatch_due_bookings.apply(task_id="relay-1")
    assert dispatches() == booked
    # The next beat's relay leaves fresh claims alone (before the fix: for 360 s)...
    tasks.dispatch_due_bookings.apply(task_id="relay-2")
    assert dispatches() == []
    # ...but the dead relay's own message comes back (acks_late) under its id and sends again.
    tasks.dispatch_due_bookings.apply(task_id="relay-1")
    assert dispatches() == booked
    # A booking whose workload started is not sent again.
    Booking.objects.get(pk=booked[0]).allocations.update(workload_id="started")
    tasks.dispatch_due_bookings.apply(task_id="relay-1")
    assert dispatches() == booked[1:]
    for booking in Booking.objects.filter(pk__in=booked):
        assert _dispatching_events(booking) == 1  # claimed once, whatever was sent


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["booking_dispatch", "booking_follow"])
def test_a_step_cut_by_its_soft_time_limit_hands_over_to_a_new_message(
    name: str,
    dave: Any,
    acme: Any,
    active_pool: Any,
    published: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active_pool(acme, size=8)
    booking = _book_now(dave, f"cut-{name}")
    published.clear()

    def cut(booking_id: int) -> dispatch.Outcome:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(dispatch, name.removeprefix("booking_"), cut)
    result = getattr(tasks, name).apply(args=(booking.pk,))
    assert result.get() == tasks.HANDED_OVER
    assert [(n, o["args"]) for n, o in published] == [(f"brokers.tasks.{name}", (booking.pk,))]


@pytest.mark.django_db
def test_setup_schedules_runs_the_relay_every_few_seconds() -> None:
    call_command("setup_schedules", verbosity=0)
    call_command("setup_schedules", verbosity=0)
    relay = PeriodicTask.objects.get(task="brokers.tasks.dispatch_due_bookings")
    assert relay.enabled and relay.interval.every == services.DISPATCH_RELAY_SECONDS


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    with django_db_blocker.unblock(), celery_worker() as child:
        yield child


@pytest.mark.django_db(transaction=True)
@pytest.mark.dispatch
@pytest.mark.slow
def test_a_dispatch_message_lost_at_commit_is_recovered_by_the_relay(
    worker: Any,
    dave: Any,
    acme: Any,
    active_pool: Any,
    fake_agent: FakeAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = active_pool(acme, size=8)
    pool.center.agent_endpoint = f"127.0.0.1:{fake_agent.port}"
    pool.center.save()
    # The broker dies (or Redis refuses) between the commit and the publish: every message
    # this booking would send is lost.
    with monkeypatch.context() as lost:
        lost.setattr(Task, "apply_async", lambda *args, **kwargs: None)
        booking = _book_now(dave, "lost-at-commit")
    assert booking.status == BookingStatus.CONFIRMED
    # The next beat of the relay (as django-celery-beat sends it) recovers it.
    tasks.dispatch_due_bookings.delay()
    try:
        wait_for(
            lambda: Booking.objects.get(pk=booking.pk).status == BookingStatus.FINISHED,
            timeout=60,
            what="the relayed booking finished",
        )
    except TimeoutError:
        print(worker.output())
        raise
    booking.refresh_from_db()
    assert fake_agent.started == [f"{booking.national_id}-{booking.allocations.get().pk}"]
    assert _dispatching_events(booking) == 1
