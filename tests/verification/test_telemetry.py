"""The platform's Telemetry gRPC service: who may report heartbeats for which pool.

The server runs in this process on 127.0.0.1:0 and serves calls on its own threads (with their
own database connections), so these tests commit their rows (``transaction=True``). It has the
broker's interceptors (``registry.rpc``): the last tests prove that a bad call, a domain error, an
unexpected error and a database away are answered by them, and that health and reflection stay
open.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from django.db import OperationalError
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agent.config import HeartbeatConfig, PoolConfig
from agent.heartbeat import HeartbeatSender
from agent.workloads import WorkloadRunner
from interconnect.metrics import GRPC_LATENCY
from protos import agent_pb2, agent_pb2_grpc
from protos.errors import DOMAIN, ERRORS
from registry import rpc
from registry import services as registry_services
from registry.context import deadline_at, request_id_var
from registry.errors import StaleVersion
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory
from tests.verification.conftest import agent_config, wait_for
from verification import services as verification_services
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


# --- The interceptors (registry.rpc), the same as the broker's ------------------------------------


def calls_counted(code: str) -> float:
    """How many SendHeartbeat calls the metrics interceptor saw end with ``code``."""
    labels = {"method": "SendHeartbeat", "code": code}
    return REGISTRY.get_sample_value(f"{GRPC_LATENCY._name}_count", labels) or 0.0


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == DOMAIN
    return info.reason


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer   ", "bearer-token-without-scheme"]
)
def test_a_header_the_bearer_parser_refuses_is_unauthenticated(
    telemetry: Any, acme_pool: Any, alice: Any, header: str
) -> None:
    """The one bearer-token parser (``rpckit.auth``) decides, in the auth interceptor, before
    the servicer runs; the metrics interceptor counts the call with the status it ended with."""
    _, stub = telemetry
    token_of(alice)
    before = calls_counted("UNAUTHENTICATED")

    with pytest.raises(grpc.RpcError) as raised:
        stub.SendHeartbeat(
            heartbeat(acme_pool.national_id), metadata=(("authorization", header),), timeout=10
        )

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == rpc.UNAUTHENTICATED_MESSAGE
    assert _reason(raised.value) == "unauthenticated"  # the catalog entry, as at the broker
    assert not Heartbeat.objects.exists()
    assert calls_counted("UNAUTHENTICATED") == before + 1


def test_the_call_runs_as_the_caller_with_its_request_id_and_deadline(
    telemetry: Any, acme_pool: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stub = telemetry
    seen: dict[str, Any] = {}
    record = verification_services.heartbeat_record

    def spy(**kwargs: Any) -> Any:
        seen.update(
            actor=kwargs["actor"],
            request_id=request_id_var.get(),
            deadline=deadline_at.get(),
        )
        return record(**kwargs)

    monkeypatch.setattr(verification_services, "heartbeat_record", spy)

    stub.SendHeartbeat(
        heartbeat(acme_pool.national_id),
        metadata=(("authorization", f"Bearer {token_of(alice)}"), ("x-request-id", "req-42")),
        timeout=10,
    )

    assert seen["actor"] == alice
    assert seen["request_id"] == "req-42"
    assert seen["deadline"] is not None
    assert Heartbeat.objects.filter(pool=acme_pool).count() == 1


@pytest.mark.parametrize(
    ("error", "spec"),
    [
        (StaleVersion(3), ERRORS["version.stale"]),
        (OperationalError("server closed the connection"), ERRORS["database.unavailable"]),
    ],
    ids=["stale", "database"],
)
def test_a_domain_error_is_answered_from_the_catalog(
    telemetry: Any,
    acme_pool: Any,
    alice: Any,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    spec: Any,
) -> None:
    """Any error of the catalog the service raises, not only the few the servicer caught
    before: StaleVersion is ABORTED with its reason code, as at the broker."""
    _, stub = telemetry

    def refuse(**kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(verification_services, "heartbeat_record", refuse)

    answer = call(stub, heartbeat(acme_pool.national_id), token_of(alice))

    assert isinstance(answer, grpc.RpcError)
    assert answer.code() == spec.grpc_code  # type: ignore[attr-defined]
    assert _reason(answer) == spec.reason


def test_an_unexpected_error_is_internal_and_leaks_nothing(
    telemetry: Any, acme_pool: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stub = telemetry

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("SELECT * FROM registry_pool WHERE operator = 'rival'")

    monkeypatch.setattr(verification_services, "heartbeat_record", broken)

    answer = call(stub, heartbeat(acme_pool.national_id), token_of(alice))

    assert isinstance(answer, grpc.RpcError)
    assert answer.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert "registry_pool" not in (answer.details() or "")  # type: ignore[attr-defined]


def test_the_database_away_at_authentication_is_unavailable(
    telemetry: Any, acme_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retryable, never UNKNOWN: the agent's heartbeat sender tries again."""
    _, stub = telemetry

    def away(token: str) -> None:
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(rpc, "user_for_token", away)

    answer = call(stub, heartbeat(acme_pool.national_id), "never-seen-token")

    assert isinstance(answer, grpc.RpcError)
    assert answer.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_health_and_reflection_stay_open_without_a_token(telemetry: Any) -> None:
    address, _ = telemetry
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        listed = {s.name for a in answers for s in a.list_services_response.service}
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "interconnect.agent.v1.Telemetry" in listed


def _token_lookups_since(moment: Any) -> int:
    """Sessions opened since ``moment`` whose last statement read the API tokens (what a
    handler thread's connection did for a refused call), besides this test's own."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start >= %s AND query LIKE %s",
            [moment, "%registry_apitoken%"],
        )
        return int(cur.fetchone()[0])


def test_the_stopped_server_closes_its_handlers_connections_refused_calls_too(
    acme_pool: Any,
) -> None:
    """A refused call (a token looked up and not found) opened a connection in a handler
    thread too; the stopped server closes it, or the test database could not be dropped."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT clock_timestamp()")
        started = cur.fetchone()[0]
    server, port = create_telemetry_server("127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_pb2_grpc.TelemetryStub(channel)
        assert call(stub, heartbeat(acme_pool.national_id), "ci_nope_nope").code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    assert _token_lookups_since(started) == 1
    stop_telemetry_server(server, grace=0)
    # The backend ends a moment after its client closed the connection.
    wait_for(lambda: _token_lookups_since(started) == 0, what="the handler's connection closed")
