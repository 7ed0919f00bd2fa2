"""The documented metrics move when their events happen, and ``METRICS_PORT`` serves them.

In-process first (the broker's interceptors on a real gRPC server, ``booking_create``,
``heartbeat_record``), then over HTTP from real processes started as the README says: ``run_broker
--processes 2`` (the parent serves the sum of its two children), ``run_telemetry``, and a prefork
Celery worker (the main process serves what its pool child counted).
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from django.core.exceptions import ValidationError
from prometheus_client import REGISTRY

from brokers import services as broker_services
from brokers.client.client import BrokerClient, workload_spec
from brokers.errors import CapacityExhausted
from brokers.rpc.server import BrokerRuntime, build_server
from interconnect.celery import app as celery_app
from protos import agent_pb2, agent_pb2_grpc
from registry import services as registry_services
from registry.choices import Door
from registry.models import WebhookDelivery, WebhookSubscription
from tests.brokers.broker_testing import PYTHON, ROOT, Child, child_env, free_port, wait_for
from tests.brokers.conftest import spec
from tests.factories import CenterFactory, PoolFactory
from tests.harness.receiver import WebhookReceiver
from verification.services import PoolBeat, heartbeat_record

pytestmark = pytest.mark.django_db(transaction=True)

LATENCY = "interconnect_grpc_request_duration_seconds_count"


@pytest.fixture(autouse=True)
def _placement_from_the_database(settings: Any) -> None:
    """As in tests/brokers: no pool snapshot left from another test, no dispatch."""
    from brokers.placement import catalog

    settings.BROKER_DISPATCH = False
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()


@pytest.fixture
def pool(acme: Any) -> Any:
    """An active pool of 8 A100s of the operator acme."""
    center = CenterFactory(operator=acme, status="active")
    return PoolFactory(center=center, nodes=1, accelerators_per_node=8, status="active")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def test_grpc_latency_is_recorded_per_method_and_code(
    broker: BrokerRuntime, dave: Any, pool: Any
) -> None:
    _, token = registry_services.token_create(user=dave, name="metrics")
    target = f"127.0.0.1:{broker.port}"
    before = {
        code: value(LATENCY, method="QueryCapacity", code=code)
        for code in ("OK", "UNAUTHENTICATED")
    }
    booked_before = value(LATENCY, method="Book", code="RESOURCE_EXHAUSTED")
    with BrokerClient(target, token) as client:
        client.capacity()
        client.capacity()
        with pytest.raises(grpc.RpcError):
            client.book(workload_spec(accelerator_model="nvidia-a100-80g", count=64))
    with BrokerClient(target, "not-a-token") as stranger, pytest.raises(grpc.RpcError):
        stranger.capacity()
    assert value(LATENCY, method="QueryCapacity", code="OK") - before["OK"] == 2
    assert (
        value(LATENCY, method="QueryCapacity", code="UNAUTHENTICATED") - before["UNAUTHENTICATED"]
        == 1
    )
    assert value(LATENCY, method="Book", code="RESOURCE_EXHAUSTED") - booked_before == 1


def test_bookings_and_refusals_are_counted_by_door_and_reason(dave: Any, pool: Any) -> None:
    accepted = value("interconnect_bookings_total", door="broker")
    refused = {
        r: value("interconnect_booking_refusals_total", reason=r) for r in ("capacity", "invalid")
    }

    def book(key: str, count: int) -> Any:
        return broker_services.booking_create(
            spec=spec(count=count), idempotency_key=key, actor=dave, door=Door.BROKER
        )

    book("m1", 4)
    book("m1", 4)  # the same key: the first booking again, not a new one
    with pytest.raises(CapacityExhausted):
        book("m2", 16)
    with pytest.raises(ValidationError):
        book("", 4)
    assert value("interconnect_bookings_total", door="broker") - accepted == 1
    for reason in ("capacity", "invalid"):
        after = value("interconnect_booking_refusals_total", reason=reason)
        assert after - refused[reason] == 1, reason


def test_heartbeats_are_counted(alice: Any, pool: Any) -> None:
    before = value("interconnect_heartbeats_total")
    beat = PoolBeat(pool.national_id, 0.5, pool.accelerators, 1)
    heartbeat_record(actor=alice, agent_id="a-1", sent_at=None, pools=[beat])
    heartbeat_record(actor=alice, agent_id="a-1", sent_at=None, pools=[beat])
    assert value("interconnect_heartbeats_total") - before == 2


# --- METRICS_PORT over HTTP, from the real processes ------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, number = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(number)
    return 0.0


def started(argv: list[str], ready: str, **env: str) -> Child:
    child = Child(argv, child_env(LOG_LEVEL="INFO", **env))
    try:
        wait_for(lambda: any(ready in line for line in child.lines), timeout=90, what=ready)
    except TimeoutError:
        child.stop()
        raise AssertionError(f"{argv[2:4]} did not start:\n{child.output()[-3000:]}") from None
    return child


def test_metrics_port_serves_the_broker_processes_and_the_telemetry_server(
    dave: Any, alice: Any, pool: Any
) -> None:
    _, firm_token = registry_services.token_create(user=dave, name="metrics")
    _, operator_token = registry_services.token_create(user=alice, name="metrics")
    grpc_port, metrics_port = free_port(), free_port()
    broker = started(
        [PYTHON, "manage.py", "run_broker", "--port", str(grpc_port), "--processes", "2"],
        "broker listening",
        METRICS_PORT=str(metrics_port),
        BROKER_DISPATCH="0",
    )
    try:
        wait_for(lambda: scrape(metrics_port), timeout=30, what="the broker's metrics port")
        calls = 12
        for _ in range(calls):  # a new connection each: the kernel spreads them over both
            with BrokerClient(f"127.0.0.1:{grpc_port}", firm_token) as client:
                client.capacity()
        with BrokerClient(f"127.0.0.1:{grpc_port}", firm_token) as client:
            client.book(workload_spec(accelerator_model="nvidia-a100-80g", count=4))
        text = scrape(metrics_port)
    finally:
        broker.stop()
    assert sample(text, LATENCY, method="QueryCapacity", code="OK") == calls, text[-2000:]
    assert sample(text, "interconnect_bookings_total", door="broker") == 1
    assert sample(text, LATENCY, method="Book", code="OK") == 1

    telemetry_port, metrics_port = free_port(), free_port()
    telemetry = started(
        [PYTHON, "manage.py", "run_telemetry", "--port", str(telemetry_port)],
        "telemetry listening",
        METRICS_PORT=str(metrics_port),
    )
    try:
        before = sample(scrape(metrics_port), "interconnect_heartbeats_total")
        with grpc.insecure_channel(f"127.0.0.1:{telemetry_port}") as channel:
            agent_pb2_grpc.TelemetryStub(channel).SendHeartbeat(
                agent_pb2.SendHeartbeatRequest(
                    agent_id="metrics-test",
                    pools=[
                        agent_pb2.PoolHeartbeat(
                            pool_national_id=pool.national_id,
                            utilization=0.25,
                            accelerators_healthy=pool.accelerators,
                            accelerators_busy=2,
                        )
                    ],
                ),
                metadata=(("authorization", f"Bearer {operator_token}"),),
                timeout=10,
            )
        after = sample(scrape(metrics_port), "interconnect_heartbeats_total")
    finally:
        telemetry.stop()
    assert (before, after) == (0, 1)


def test_metrics_port_serves_what_the_workers_pool_children_counted(acme: Any) -> None:
    receiver = WebhookReceiver()
    subscription = WebhookSubscription.objects.create(
        organization=acme, url=receiver.url, events=["pool.verified"]
    )
    delivery = WebhookDelivery.objects.create(
        subscription=subscription, event="pool.verified", event_id=uuid.uuid4(), payload={}
    )
    metrics_port = free_port()
    worker = started(
        [
            str(ROOT / ".venv" / "bin" / "celery"), "-A", "interconnect", "worker", "-l", "info",
            "-P", "prefork", "-c", "1", "--without-mingle", "--without-gossip",
            "-n", f"metrics-{uuid.uuid4().hex[:8]}@%h",
        ],
        " ready.",
        METRICS_PORT=str(metrics_port),
    )  # fmt: skip
    try:
        celery_app.send_task("registry.tasks.webhook_deliver_task", args=[delivery.pk])

        def delivered() -> float:
            text = scrape(metrics_port)
            return sum(
                sample(text, "interconnect_webhook_deliveries_total", outcome=o)
                for o in ("delivered", "failed", "retry")
            )

        counted = wait_for(delivered, timeout=60, what="a delivery counted on the worker's port")
    finally:
        worker.stop()
        receiver.close()
    assert counted >= 1
