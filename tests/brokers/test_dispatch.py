"""The whole path on real parts: a gRPC broker on loopback, a Celery worker process on Redis and
simulated site agents: query -> place -> book -> dispatched -> running -> finished, and a
workload re-placed when its center cannot take it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from agent.server import AgentRuntime
from agent.server import build_server as build_agent
from brokers.client.client import BrokerClient, workload_spec
from brokers.models import Booking, UsageRecord
from brokers.rpc.server import BrokerRuntime, build_server
from protos import broker_pb2 as pb
from registry import services as registry_services
from tests.brokers.broker_testing import celery_worker, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.dispatch, pytest.mark.slow]

# A 600 s workload lasts 0.6 s on the simulated agents.
TIME_SCALE = 1e-3


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    with django_db_blocker.unblock(), celery_worker() as child:
        yield child


@pytest.fixture
def agent() -> Iterator[Any]:
    started: list[AgentRuntime] = []

    def start() -> AgentRuntime:
        config = AgentConfig(
            agent_id=f"sim-{len(started)}",
            port=0,
            pools=(
                PoolConfig(
                    key="a100",
                    accelerator_model="nvidia-a100-80g",
                    accelerators_per_node=8,
                    nodes=1,
                    declared_tflops_per_accelerator=312.0,
                ),
            ),
            simulation=SimulationConfig(mode=SimulationMode.HONEST, time_scale=TIME_SCALE),
            workload_startup_seconds=0.0,
        )
        runtime = build_agent("127.0.0.1:0", agent_config=config)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop(grace=0).wait()


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def _spec() -> pb.WorkloadSpec:
    return workload_spec(
        accelerator_model="nvidia-a100-80g",
        count=4,
        duration_seconds=600,
        image="registry.example/train:1",
        command="python train.py",
    )


def _watch(client: BrokerClient, booking_id: str, worker: Any) -> list[pb.BookingEvent]:
    try:
        return list(client.watch(booking_id, timeout=60))
    except Exception:
        print(worker.output())
        raise


def test_query_place_book_dispatch_finish(
    worker: Any, broker: BrokerRuntime, agent: Any, dave: Any, acme: Any, active_pool: Any
) -> None:
    site = agent()
    pool = active_pool(acme, size=8)
    pool.center.agent_endpoint = f"127.0.0.1:{site.port}"
    pool.center.save()
    _, token = registry_services.token_create(user=dave, name="e2e")
    with BrokerClient(f"127.0.0.1:{broker.port}", token) as client:
        assert [e.pool for e in client.capacity_all()] == [pool.national_id]
        option = client.place(_spec()).options[0]
        booking = client.book(
            _spec(),
            idempotency_key="e2e-1",
            option=[(p.pool, p.accelerators) for p in option.parts],
        )
        events = _watch(client, booking.booking_id, worker)
        final = client.booking(booking.booking_id)
    statuses = [pb.BookingStatus.Name(e.status) for e in events]
    kinds = [e.kind for e in events]
    assert kinds[0] == "created" and "dispatched" in kinds
    assert "BOOKING_STATUS_RUNNING" in statuses
    assert statuses[-1] == "BOOKING_STATUS_FINISHED"
    assert final.status == pb.BOOKING_STATUS_FINISHED
    assert final.allocations[0].workload_state == "succeeded"
    # Usage from the workload's real start and end: 4 accelerators for about 0.6 s.
    usage = UsageRecord.objects.get(allocation__booking__national_id=booking.booking_id)
    assert 0 < usage.accelerator_hours < 0.01 and usage.currency == "CNY"


def test_a_failed_dispatch_is_replaced_elsewhere_and_the_client_sees_it(
    worker: Any, broker: BrokerRuntime, agent: Any, dave: Any, acme: Any, active_pool: Any
) -> None:
    dead = active_pool(acme, size=8, price="5.00")  # cheapest: chosen first
    dead.center.agent_endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    dead.center.save()
    site = agent()
    alive = active_pool(acme, size=8, price="9.00")
    alive.center.agent_endpoint = f"127.0.0.1:{site.port}"
    alive.center.save()
    _, token = registry_services.token_create(user=dave, name="e2e")
    with BrokerClient(f"127.0.0.1:{broker.port}", token) as client:
        booking = client.book(_spec(), idempotency_key="e2e-2")
        assert booking.allocations[0].pool == dead.national_id
        events = _watch(client, booking.booking_id, worker)
    replaced = [e for e in events if e.kind == "replaced"]
    assert replaced and replaced[0].booking_id == booking.booking_id
    new_id = replaced[0].replaced_by
    assert events[-1].booking_id == new_id
    assert events[-1].status == pb.BOOKING_STATUS_FINISHED
    old, new = (
        Booking.objects.get(national_id=booking.booking_id),
        Booking.objects.get(national_id=new_id),
    )
    assert old.status == "replaced" and old.replaced_by_id == new.pk
    assert [a.pool_id for a in new.allocations.all()] == [alive.pk]
    assert dead.center.national_id in new.spec["centers_excluded"]
