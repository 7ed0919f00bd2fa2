"""Push, not poll (issue 14), through a real broker (grpc.aio) and real PostgreSQL notifications.

- WatchBooking streams wake on the NOTIFY sent by the transaction that records an event: with
  the safety re-read pushed out of reach, every stream still gets its event, and there are more
  streams than the server has threads (a thread per stream would leave most of them waiting).
- A pool inserted, repriced or taken offline by any writer (raw SQL included) reaches the
  placement snapshot without waiting for its refresh period.
- The one-round-trip booking (``broker_book``) answers a reused key with the stored booking, and
  its refusals name the reason like the Python path's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from django.db import connection

from brokers import booking_sql, services
from brokers.choices import EventKind
from brokers.errors import CapacityExhausted
from brokers.placement import catalog
from brokers.rpc import servicer
from brokers.rpc.server import BrokerRuntime, build_server
from protos import broker_pb2 as pb
from protos import broker_pb2_grpc
from registry import services as registry_services
from registry.choices import Door
from tests.brokers.conftest import next_hour, spec

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = 24
THREADS = 2


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=THREADS)
    yield runtime
    runtime.stop(grace=0).wait()


def _eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_streams_wake_on_the_events_commit_more_streams_than_threads(
    broker: BrokerRuntime, dave: Any, acme: Any, active_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No safety re-read while the test runs: only a notification can wake a stream.
    monkeypatch.setattr(servicer, "WATCH_IDLE_SECONDS", 3600.0)
    active_pool(acme, size=64)
    bookings = [
        services.booking_create(
            spec=spec(count=1), idempotency_key=f"watch-{i}", actor=dave, door=Door.API
        )
        for i in range(STREAMS)
    ]
    _, token = registry_services.token_create(user=dave, name="watch")
    opened: set[str] = set()
    got: dict[str, str] = {}

    async def watch_all() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{broker.port}") as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)

            async def watch(booking_id: str) -> None:
                call = stub.WatchBooking(
                    pb.WatchBookingRequest(booking_id=booking_id),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=60,
                )
                async for reply in call:
                    if reply.event.kind == EventKind.CREATED:
                        opened.add(booking_id)
                    else:
                        got[booking_id] = reply.event.message
                        call.cancel()
                        return

            tasks = [asyncio.create_task(watch(b.national_id)) for b in bookings]
            deadline = time.monotonic() + 30
            while len(opened) < STREAMS and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(opened) == STREAMS, f"{len(opened)} of {STREAMS} streams served"
            # Each event in its own transaction, from this (another) thread's connection.
            await asyncio.to_thread(_record_events, bookings)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(watch_all())
    assert got == {b.national_id: f"note {b.national_id}" for b in bookings}


def _record_events(bookings: list[Any]) -> None:
    try:
        for booking in bookings:
            services.booking_record(
                booking=booking, kind=EventKind.WORKLOAD, message=f"note {booking.national_id}"
            )
    finally:
        connection.close()


def test_a_pool_changed_by_any_writer_reaches_the_snapshot(
    broker: BrokerRuntime, acme: Any, active_pool: Any, settings: Any
) -> None:
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 3600  # only a notification refreshes it
    catalog.invalidate()
    first = active_pool(acme)
    assert first.pk in {c.pool_id for c in catalog.current().pools}

    def pool(pk: int) -> Any:
        return next((c for c in catalog.current().pools if c.pool_id == pk), None)

    second = active_pool(acme)  # the ORM, in its own transaction
    _eventually(lambda: pool(second.pk), "a new pool in the snapshot")
    with connection.cursor() as cur:  # raw SQL, around every signal
        cur.execute(
            "UPDATE registry_pool SET price_per_accelerator_hour = 0.5 WHERE id = %s", [second.pk]
        )
    _eventually(
        lambda: pool(second.pk) and pool(second.pk).price == Decimal("0.5"), "the new price"
    )
    with connection.cursor() as cur:
        cur.execute("UPDATE registry_pool SET status = 'offline' WHERE id = %s", [first.pk])
    _eventually(lambda: pool(first.pk) is None, "an offline pool leaving the snapshot")
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE registry_center SET status = 'offline' WHERE id = %s", [second.center_id]
        )
    _eventually(lambda: pool(second.pk) is None, "the pools of an offline center leaving")


def test_the_one_round_trip_booking_keeps_the_rules(dave: Any, acme: Any, active_pool: Any) -> None:
    assert booking_sql.available()
    pool = active_pool(acme, size=8)
    option = [(pool.national_id, 8)]
    first = services.booking_create(
        spec=spec(count=8), idempotency_key="k", actor=dave, door=Door.API, option=option
    )
    assert first.allocations.get().accelerators == 8
    # A reused key answers with the stored booking, whatever the request (full pool or not).
    again = services.booking_create(
        spec=spec(count=8), idempotency_key="k", actor=dave, door=Door.API, option=option
    )
    assert again.pk == first.pk and again.national_id == first.national_id
    with pytest.raises(CapacityExhausted) as full:
        services.booking_create(
            spec=spec(count=8), idempotency_key="k2", actor=dave, door=Door.API, option=option
        )
    assert full.value.code == "booking.capacity_exceeded" and pool.national_id in full.value.detail
    later = spec(count=4, earliest_start=next_hour() + dt.timedelta(hours=5))
    with connection.cursor() as cur:
        cur.execute("UPDATE registry_pool SET status = 'degraded' WHERE id = %s", [pool.pk])
    with pytest.raises(CapacityExhausted) as closed:
        services.booking_create(
            spec=later,
            idempotency_key="k3",
            actor=dave,
            door=Door.API,
            option=[(pool.national_id, 4)],
        )
    assert closed.value.code == "pool.not_bookable"
    # Nothing of the refused bookings was written.
    assert list(
        dave.membership.organization.bookings.values_list("idempotency_key", flat=True)
    ) == ["k"]
