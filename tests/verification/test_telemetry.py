"""The platform's Telemetry gRPC service: who may report heartbeats for which pool.

The server runs in this process on 127.0.0.1:0 and serves calls on its own threads (with their
own database connections), so these tests commit their rows (``transaction=True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from agent.config import HeartbeatConfig, PoolConfig
from agent.heartbeat import HeartbeatSender
from agent.workloads import WorkloadRunner
from protos import agent_pb2, agent_pb2_grpc
from registry import services as registry_services
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory
from tests.verification.conftest import agent_config, wait_for
from verification.models import Heartbeat
from verification.rpc.telemetry import create_telemetry_server, stop_telemetry_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def telemetry() -> Iterator[tuple[str, agent_pb2_grpc.TelemetryStub]]:
    server, port = create_telemetry_server("127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield f"127.0.0.1:{port}", agent_pb2_grpc.TelemetryStub(channel)
    channel.close()
    stop_telemetry_server(server, grace=0)


def token_of(user: Any) -> str:
    return registry_services.token_create(user=user, name="agent")[1]


def heartbeat(pool_id: str, utilization: float = 0.25, **fields: Any) -> Any:
    entry = {
        "pool_national_id": pool_id,
        "pool_key": "k",
        "utilization": utilization,
        "accelerators_healthy": 32,
        "accelerators_busy": 8,
        **fields,
    }
    return agent_pb2.SendHeartbeatRequest(
        agent_id="agent-1", pools=[agent_pb2.PoolHeartbeat(**entry)]
    )


def call(stub: Any, request: Any, token: str | None) -> grpc.RpcError | Any:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        return stub.SendHeartbeat(request, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc


@pytest.fixture
def acme_pool(acme: Any) -> Any:
    return force_status(PoolFactory(center=CenterFactory(operator=acme)), "active")


def test_an_operator_reports_a_heartbeat_for_its_pool(
    telemetry: Any, acme_pool: Any, bob: Any
) -> None:
    _, stub = telemetry

    answer = call(stub, heartbeat(acme_pool.national_id), token_of(bob))

    assert answer.received_at.seconds > 0
    row = Heartbeat.objects.get(pool=acme_pool)
    assert (row.agent_id, row.utilization, row.accelerators_busy) == ("agent-1", 0.25, 8)


@pytest.mark.parametrize("token", [None, "ci_nope_nope", "garbage"])
def test_it_refuses_a_missing_or_bad_token(telemetry: Any, acme_pool: Any, token: Any) -> None:
    _, stub = telemetry

    error = call(stub, heartbeat(acme_pool.national_id), token)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not Heartbeat.objects.exists()


def test_it_refuses_an_ai_firm(telemetry: Any, acme_pool: Any, dave: Any) -> None:
    _, stub = telemetry

    error = call(stub, heartbeat(acme_pool.national_id), token_of(dave))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("which", ["foreign", "missing"])
def test_a_pool_that_is_not_the_callers_is_not_found(
    telemetry: Any, acme_pool: Any, carol: Any, which: str
) -> None:
    _, stub = telemetry
    pool_id = acme_pool.national_id if which == "foreign" else "CN-XX-XX-9999-P01"

    error = call(stub, heartbeat(pool_id), token_of(carol))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert not Heartbeat.objects.exists()


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"utilization": 1.5}, "pools[0].utilization"),
        ({"utilization": float("nan")}, "pools[0].utilization"),
        ({"accelerators_busy": 40}, "pools[0].accelerators_busy"),
        ({"pool_national_id": ""}, "pools[0].pool_national_id"),
    ],
)
def test_bad_values_are_invalid_argument_with_field_violations(
    telemetry: Any, acme_pool: Any, alice: Any, fields: dict[str, Any], violation: str
) -> None:
    _, stub = telemetry
    request = heartbeat(acme_pool.national_id)
    for name, value in fields.items():
        setattr(request.pools[0], name, value)

    error = call(stub, request, token_of(alice))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    assert [v.field for v in detail.field_violations] == [violation]
    assert not Heartbeat.objects.exists()


def test_a_pool_of_another_center_than_announced_is_invalid(
    telemetry: Any, acme_pool: Any, alice: Any
) -> None:
    _, stub = telemetry
    request = heartbeat(acme_pool.national_id)
    request.center_national_id = "CN-OTHER-0001"

    error = call(stub, request, token_of(alice))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_reports_health(telemetry: Any) -> None:
    address, _ = telemetry
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="interconnect.agent.v1.Telemetry"), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_real_agent_heartbeats_into_the_platform(
    telemetry: Any, acme_pool: Any, alice: Any
) -> None:
    address, _ = telemetry
    base = agent_config()
    pool = replace(base.pools[0], national_id=acme_pool.national_id)
    config = replace(
        base,
        pools=(pool,),
        heartbeat=HeartbeatConfig(platform=address, token=token_of(alice), interval_seconds=0.2),
    )
    sender = HeartbeatSender(config, WorkloadRunner((pool,), time_scale=1.0))
    sender.start()
    try:
        wait_for(lambda: Heartbeat.objects.filter(pool=acme_pool).count() >= 2, what="heartbeats")
    finally:
        sender.stop()

    latest = Heartbeat.objects.filter(pool=acme_pool).first()
    assert latest.agent_id == "test-honest"
    assert latest.accelerators_healthy == acme_pool.accelerators == 32
    assert isinstance(pool, PoolConfig)
