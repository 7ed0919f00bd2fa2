"""The whole path on a Slurm-backed center: a gRPC broker, a Celery worker and the agent with
``--scheduler slurm`` on a real Slurm cluster. A booking holds its window as a Slurm
reservation, runs as a job in it, and its usage comes from sacct; a cancelled booking leaves
neither; a center whose nodes are taken locally makes the booking re-placed elsewhere."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from agent.server import AgentRuntime
from agent.server import build_server as build_agent
from brokers.client.client import BrokerClient, workload_spec
from brokers.models import Booking, UsageRecord
from brokers.rpc.server import BrokerRuntime, build_server
from protos import broker_pb2 as pb
from registry import services as registry_services
from registry.models import Cluster
from tests.brokers.broker_testing import celery_worker
from tests.factories import CenterFactory, PoolFactory
from tests.harness.procs import wait_until
from tests.harness.slurm import SlurmCluster
from tests.slurm.conftest import StartSlurmAgent, work_file

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.dispatch, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    with django_db_blocker.unblock(), celery_worker() as child:
        yield child


@pytest.fixture(autouse=True)
def _fresh_placement(settings: Any) -> None:
    """Bookings are dispatched, and placement asks the database (no snapshot of the pools of
    an earlier test)."""
    from brokers.placement import catalog

    settings.BROKER_DISPATCH = True
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def _pool(operator: Any, endpoint: str, price: str) -> Any:
    center = CenterFactory(
        operator=operator,
        cluster=Cluster.objects.get(code="ZW"),
        status="active",
        agent_endpoint=endpoint,
    )
    return PoolFactory(
        center=center,
        nodes=2,
        accelerators_per_node=8,
        price_per_accelerator_hour=price,
        status="active",
    )


def _spec(command: str, **kwargs: Any) -> pb.WorkloadSpec:
    return workload_spec(
        accelerator_model="nvidia-a100-80g",
        count=4,
        duration_seconds=600,
        image="registry.example/train:1",
        command=command,
        **kwargs,
    )


def _reservations(cluster: SlurmCluster) -> str:
    return cluster.run("scontrol", "show", "reservation", "-o").stdout


def _jobs(cluster: SlurmCluster, name: str) -> str:
    return cluster.run("squeue", "-h", "-n", name, "-o", "%i %T").stdout.strip()


def test_a_booking_holds_its_window_runs_as_a_job_and_bills_what_sacct_measured(
    worker: Any,
    broker: BrokerRuntime,
    slurm_agent: StartSlurmAgent,
    slurm_cluster: SlurmCluster,
    dave: Any,
    acme: Any,
) -> None:
    runtime, scheduler, _ = slurm_agent()
    pool = _pool(acme, f"127.0.0.1:{runtime.port}", "10.00")
    _, token = registry_services.token_create(user=dave, name="slurm-e2e")
    later = timezone.now().replace(microsecond=0) + dt.timedelta(hours=2)
    out = work_file(slurm_cluster, "e2e-1.txt")
    with BrokerClient(f"127.0.0.1:{broker.port}", token) as client:
        # A window in two hours: held at once as a reservation of one whole node.
        future = client.book(_spec("true", earliest_start=later), idempotency_key="slurm-later")
        booked = Booking.objects.get(national_id=future.booking_id)
        name = f"ic-{future.booking_id}-{booked.allocations.get().pk}"
        shown = wait_until(
            lambda: next((r for r in _reservations(slurm_cluster).splitlines() if name in r), ""),
            timeout=30,
            what=f"reservation {name}",
        )
        assert "NodeCnt=1 " in shown and "Users=root " in shown
        start = booked.window_start.astimezone().strftime("%Y-%m-%dT%H:%M")
        assert f"StartTime={start}" in shown
        # Cancelling it deletes the reservation.
        client.cancel(future.booking_id, reason="changed plans")
        wait_until(lambda: name not in _reservations(slurm_cluster), timeout=30, what="deletion")

        # A window from now: the job runs in its reservation and writes its file.
        booking = client.book(_spec(f"echo trained > {out}; sleep 2"), idempotency_key="slurm-now")
        events = list(client.watch(booking.booking_id, timeout=90))
        final = client.booking(booking.booking_id)
    assert final.status == pb.BOOKING_STATUS_FINISHED, worker.output()[-3000:]
    assert "BOOKING_STATUS_RUNNING" in [pb.BookingStatus.Name(e.status) for e in events]
    assert out.read_text().strip() == "trained"
    allocation = Booking.objects.get(national_id=booking.booking_id).allocations.get()
    name = f"ic-{booking.booking_id}-{allocation.pk}"
    job_id = scheduler.get_job_id(f"{booking.booking_id}-{allocation.pk}")
    elapsed, tres = (
        slurm_cluster.run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "ElapsedRaw,AllocTRES")
        .stdout.strip()
        .split("|")
    )
    assert "gres/gpu=4" in tres
    usage = UsageRecord.objects.get(allocation=allocation)
    assert usage.accelerator_hours == (Decimal(4 * int(elapsed)) / 3600).quantize(Decimal("0.0001"))
    assert usage.cost == (usage.accelerator_hours * Decimal("10.00")).quantize(Decimal("0.01"))
    # The booking over, its reservation is released.
    wait_until(lambda: name not in _reservations(slurm_cluster), timeout=30, what="release")
    assert pool.center.agent_endpoint


def test_cancelling_a_running_booking_removes_its_job_and_reservation(
    worker: Any,
    broker: BrokerRuntime,
    slurm_agent: StartSlurmAgent,
    slurm_cluster: SlurmCluster,
    dave: Any,
    acme: Any,
) -> None:
    runtime, _, _ = slurm_agent()
    _pool(acme, f"127.0.0.1:{runtime.port}", "10.00")
    _, token = registry_services.token_create(user=dave, name="slurm-cancel")
    with BrokerClient(f"127.0.0.1:{broker.port}", token) as client:
        booking = client.book(_spec("sleep 120"), idempotency_key="slurm-cancel")
        allocation = Booking.objects.get(national_id=booking.booking_id).allocations.get()
        name = f"ic-{booking.booking_id}-{allocation.pk}"
        wait_until(
            lambda: client.booking(booking.booking_id).status == pb.BOOKING_STATUS_RUNNING,
            timeout=60,
            what="the booking running",
        )
        assert "RUNNING" in _jobs(slurm_cluster, name)
        assert name in _reservations(slurm_cluster)
        client.cancel(booking.booking_id, reason="no longer needed")
    wait_until(lambda: not _jobs(slurm_cluster, name), timeout=30, what="the job gone")
    wait_until(lambda: name not in _reservations(slurm_cluster), timeout=30, what="resv gone")


@pytest.fixture
def simulated_center() -> Iterator[AgentRuntime]:
    config = AgentConfig(
        agent_id="sim-elsewhere",
        port=0,
        pools=(
            PoolConfig(
                key="a100",
                accelerator_model="nvidia-a100-80g",
                accelerators_per_node=8,
                nodes=2,
                declared_tflops_per_accelerator=312.0,
            ),
        ),
        simulation=SimulationConfig(mode=SimulationMode.HONEST, time_scale=1e-3),
        workload_startup_seconds=0.0,
    )
    runtime = build_agent("127.0.0.1:0", agent_config=config)
    yield runtime
    runtime.stop(grace=0).wait()


def test_a_center_whose_nodes_are_taken_locally_makes_the_booking_move(
    worker: Any,
    broker: BrokerRuntime,
    slurm_agent: StartSlurmAgent,
    slurm_cluster: SlurmCluster,
    simulated_center: AgentRuntime,
    dave: Any,
    acme: Any,
) -> None:
    runtime, _, _ = slurm_agent()
    cheap = _pool(acme, f"127.0.0.1:{runtime.port}", "5.00")  # cheapest: chosen first
    elsewhere = _pool(acme, f"127.0.0.1:{simulated_center.port}", "9.00")
    later = timezone.now().replace(microsecond=0) + dt.timedelta(hours=3)
    # The center's own users hold every node for that window.
    slurm_cluster.run(
        "scontrol",
        "create",
        "reservation",
        "ReservationName=local-maintenance",
        "Users=daemon",
        f"StartTime={(later - dt.timedelta(minutes=30)).astimezone():%Y-%m-%dT%H:%M:%S}",
        "Duration=120",
        "NodeCnt=2",
        "PartitionName=gpu",
    )
    try:
        _, token = registry_services.token_create(user=dave, name="slurm-move")
        with BrokerClient(f"127.0.0.1:{broker.port}", token) as client:
            booking = client.book(_spec("true", earliest_start=later), idempotency_key="move")
            assert booking.allocations[0].pool == cheap.national_id
            old = wait_until(
                lambda: (
                    (b := Booking.objects.get(national_id=booking.booking_id)).status == "replaced"
                    and b
                ),
                timeout=60,
                what="the booking re-placed",
            )
        new = old.replaced_by
        assert [a.pool_id for a in new.allocations.all()] == [elsewhere.pk]
        assert cheap.center.national_id in new.spec["centers_excluded"]
        event = old.events.filter(kind="replaced").get()
        assert "could not hold the window" in event.message and "Slurm" in event.message
        assert "ic-" not in _reservations(slurm_cluster)  # nothing half-made left behind
    finally:
        slurm_cluster.run("scontrol", "delete", "ReservationName=local-maintenance", check=False)


def test_a_drained_node_shows_in_the_platform_within_a_heartbeat(
    slurm_agent: StartSlurmAgent, slurm_cluster: SlurmCluster, acme: Any, alice: Any
) -> None:
    """The agent's heartbeats reach the platform's Telemetry service: a node drained in Slurm
    leaves the pool's healthy accelerators there within one heartbeat, and the pool degrades
    until the node is back."""
    from agent.config import HeartbeatConfig
    from agent.heartbeat import HeartbeatSender
    from verification.models import Heartbeat
    from verification.rpc.telemetry import create_telemetry_server, stop_telemetry_server

    pool = _pool(acme, "", "10.00")
    server, port = create_telemetry_server("127.0.0.1:0")
    runtime, scheduler, _ = slurm_agent()
    interval = 1.0
    config = replace(
        runtime.config,
        pools=(replace(runtime.config.pools[0], national_id=pool.national_id),),
        heartbeat=HeartbeatConfig(
            platform=f"127.0.0.1:{port}",
            token=registry_services.token_create(user=alice, name="agent")[1],
            interval_seconds=interval,
        ),
    )
    sender = HeartbeatSender(config, scheduler)
    sender.start()

    def healthy() -> int | None:
        latest = Heartbeat.objects.filter(pool=pool).order_by("-time").first()
        return latest.accelerators_healthy if latest else None

    def status() -> str:
        pool.refresh_from_db()
        return str(pool.status)

    try:
        wait_until(lambda: healthy() == 16, timeout=20, what="a heartbeat with 16 healthy")
        assert status() == "active"
        slurm_cluster.run("scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=ci")
        beats_before = Heartbeat.objects.filter(pool=pool).count()
        wait_until(lambda: healthy() == 8, timeout=20, what="the drained node in the platform")
        # Within one heartbeat: the beat in flight at the drain may still say 16, the next not.
        # (Counted in beats, not seconds: a loaded machine stretches both alike.)
        assert Heartbeat.objects.filter(pool=pool).count() - beats_before <= 2
        assert status() == "degraded"
        assert pool.status_reason == "unhealthy accelerators: 8 of 16 healthy"
    finally:
        slurm_cluster.run("scontrol", "update", "NodeName=node2", "State=RESUME")
        try:
            wait_until(lambda: healthy() == 16, timeout=20, what="the node back")
            wait_until(lambda: status() == "active", timeout=10, what="the pool active again")
        finally:
            sender.stop()
            stop_telemetry_server(server, grace=0)
