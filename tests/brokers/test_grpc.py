"""The gRPC broker on loopback: every method, every error code, tenancy, health, reflection."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from django.db import connection
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from brokers.client.client import BrokerClient, workload_spec
from brokers.rpc.server import BrokerRuntime, build_server
from protos import broker_pb2 as pb
from registry import services as registry_services
from tests.brokers.broker_testing import PoolLock
from tests.brokers.conftest import next_hour

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


@pytest.fixture
def client_as(broker: BrokerRuntime) -> Iterator[Any]:
    opened: list[BrokerClient] = []

    def make(user: Any) -> BrokerClient:
        _, token = registry_services.token_create(user=user, name="grpc")
        client = BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=10)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def a100(count: int = 4, **kwargs: Any) -> pb.WorkloadSpec:
    kwargs.setdefault("earliest_start", next_hour())
    return workload_spec(accelerator_model="nvidia-a100-80g", count=count, **kwargs)


def test_query_place_book_get_list_cancel(
    dave: Any, acme: Any, active_pool: Any, client_as: Any
) -> None:
    pools = sorted(active_pool(acme, size=8).national_id for _ in range(3))
    client = client_as(dave)
    first = client.capacity(accelerator_model="nvidia-a100-80g", page_size=2)
    assert [e.pool for e in first.entries] == pools[:2] and first.next_page_token
    assert [e.pool for e in client.capacity_all(page_size=2)] == pools
    placed = client.place(a100(8))
    assert len(placed.options) == 3 and placed.options[0].cost == "80.00"
    assert placed.options[0].explanation[0].startswith("chosen")
    spec = a100(8)
    booking = client.book(spec, idempotency_key="g1")
    assert booking.status == pb.BOOKING_STATUS_CONFIRMED
    assert booking.allocations[0].accelerators == 8
    assert client.book(spec, idempotency_key="g1").booking_id == booking.booking_id
    assert client.booking(booking.booking_id).booking_id == booking.booking_id
    assert [b.booking_id for b in client.bookings().bookings] == [booking.booking_id]
    held = client.book(
        a100(4, earliest_start=next_hour() + dt.timedelta(hours=3)), idempotency_key="g2", hold=True
    )
    assert held.status == pb.BOOKING_STATUS_HELD and held.HasField("hold_expires_at")
    assert client.confirm(held.booking_id).status == pb.BOOKING_STATUS_CONFIRMED
    cancelled = client.cancel(booking.booking_id, reason="changed my mind")
    assert cancelled.status == pb.BOOKING_STATUS_CANCELLED
    events = list(client.watch(booking.booking_id, timeout=10))
    assert [e.kind for e in events] == ["created", "status"]


def _status(exc: grpc.RpcError) -> Any:
    return rpc_status.from_call(exc)


def test_every_error_code(
    dave: Any, alice: Any, acme: Any, active_pool: Any, client_as: Any, broker: BrokerRuntime
) -> None:
    pool = active_pool(acme, size=8)
    client = client_as(dave)
    # INVALID_ARGUMENT with one field violation per bad field.
    with pytest.raises(grpc.RpcError) as bad:
        client.book(a100(3, gang_size=2, data_gb=5), idempotency_key="x")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_details_pb2.BadRequest()
    _status(bad.value).details[0].Unpack(detail)
    assert {v.field for v in detail.field_violations} == {"gang_size", "data_hub"}
    # RESOURCE_EXHAUSTED, with the reason code.
    with pytest.raises(grpc.RpcError) as full:
        client.book(a100(9), idempotency_key="y")
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    _status(full.value).details[0].Unpack(info)
    assert info.reason == "booking.no_placement"
    # NOT_FOUND for an unknown booking.
    with pytest.raises(grpc.RpcError) as missing:
        client.booking("BK-20260101-00000000")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # PERMISSION_DENIED: operators do not book.
    with pytest.raises(grpc.RpcError) as denied:
        client_as(alice).book(a100(1), idempotency_key="z")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # UNAUTHENTICATED without a valid token.
    bogus = BrokerClient(f"127.0.0.1:{broker.port}", "ci_nope_nope")
    with pytest.raises(grpc.RpcError) as anon:
        bogus.capacity()
    bogus.close()
    assert anon.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # ABORTED: every attempt meets a serialization failure (PostgreSQL raises 40001 from a
    # trigger) until the retries run out; the client may retry with the same key.
    with connection.cursor() as cur:
        cur.execute(
            "CREATE OR REPLACE FUNCTION conflict_always() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001'; END $$ "
            "LANGUAGE plpgsql"
        )
        cur.execute(
            "CREATE TRIGGER conflict_always BEFORE INSERT ON brokers_allocation "
            "FOR EACH ROW EXECUTE FUNCTION conflict_always()"
        )
    try:
        with pytest.raises(grpc.RpcError) as conflict:
            client.book(a100(1), idempotency_key="contended")
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER conflict_always ON brokers_allocation")
            cur.execute("DROP FUNCTION conflict_always()")
    assert conflict.value.code() == grpc.StatusCode.ABORTED
    assert client.book(a100(1), idempotency_key="contended").allocations  # the retry books
    assert pool.national_id


def test_the_deadline_is_passed_to_the_database(
    dave: Any, acme: Any, active_pool: Any, client_as: Any
) -> None:
    """G2: a booking blocked on a row lock stops at the caller's deadline, nothing committed."""
    pool = active_pool(acme, size=8)
    client = client_as(dave)
    # The row lock is released the moment the caller is told DEADLINE_EXCEEDED.
    with PoolLock(pool.pk):
        with pytest.raises(grpc.RpcError) as late:
            client.book(a100(4), idempotency_key="slow", timeout=1.0)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    from brokers.models import Booking

    # The server gave up too: its statement timeout rolled the booking back.
    assert not Booking.objects.filter(idempotency_key="slow").exists()


@pytest.mark.parametrize("margin", [True, False], ids=["margin", "mutation: no margin"])
def test_the_server_gives_up_before_its_caller(
    dave: Any,
    acme: Any,
    active_pool: Any,
    client_as: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    margin: bool,
) -> None:
    """G2 with the call's transit: the server's deadline starts 50 ms after the caller's. The
    row lock is released the moment the caller is told DEADLINE_EXCEEDED; the server, which
    keeps a safety margin of the remaining time, gave up before that, so nothing commits (one
    transaction or group commit alike). Mutation control: without the margin the booking is
    still waiting on the lock then, and commits after its caller gave up."""
    from brokers import ledger
    from brokers.models import Booking
    from rpckit.aio import CallContext

    settings.BROKER_DEADLINE_MARGIN_SECONDS = (
        ledger.DEFAULT_DEADLINE_MARGIN_SECONDS if margin else 0.0
    )
    arrived = CallContext.time_remaining

    def later(self: CallContext) -> float | None:
        remaining = arrived(self)
        return None if remaining is None else remaining + ledger.DEFAULT_DEADLINE_MARGIN_SECONDS / 2

    monkeypatch.setattr(CallContext, "time_remaining", later)
    pool = active_pool(acme, size=8)
    client = client_as(dave)
    # The row lock is released the moment the caller is told DEADLINE_EXCEEDED.
    with PoolLock(pool.pk):
        with pytest.raises(grpc.RpcError) as late:
            client.book(a100(4), idempotency_key="skewed", timeout=1.0)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)  # anything still running would have committed by now
    committed = Booking.objects.filter(idempotency_key="skewed").exists()
    assert committed is not margin, (
        "committed after the caller gave up" if margin else "the mutation no longer commits"
    )


def test_other_tenants_get_not_found(
    dave: Any, carol: Any, alice: Any, acme: Any, active_pool: Any, client_as: Any
) -> None:
    from tests.factories import OrganizationFactory, UserFactory

    active_pool(acme, size=8)
    booking = client_as(dave).book(a100(4), idempotency_key="t")
    eve = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    for outsider in (eve, carol):
        client = client_as(outsider)
        for call in (client.booking, client.cancel):
            with pytest.raises(grpc.RpcError) as hidden:
                call(booking.booking_id)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as hidden_watch:
            list(client.watch(booking.booking_id, timeout=5))
        assert hidden_watch.value.code() == grpc.StatusCode.NOT_FOUND
        assert list(client.bookings().bookings) == []
    # The pool's operator sees it but cannot cancel it.
    operator = client_as(alice)
    assert operator.booking(booking.booking_id).booking_id == booking.booking_id
    with pytest.raises(grpc.RpcError) as refused:
        operator.cancel(booking.booking_id)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(broker: BrokerRuntime) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{broker.port}")
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(
        health_pb2.HealthCheckRequest(service="interconnect.broker.v1.Broker"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert "interconnect.broker.v1.Broker" in names
    broker.health.enter_graceful_shutdown()
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()
    assert dt.datetime.now(dt.UTC)


def test_messages_over_the_limit_are_refused(dave: Any, client_as: Any) -> None:
    """G5: the server's explicit 4 MiB receive limit answers RESOURCE_EXHAUSTED, and the
    server keeps serving."""
    client = client_as(dave)
    with pytest.raises(grpc.RpcError) as too_big:
        client.book(a100(4, command="x" * (4 * 1024 * 1024 + 1)), idempotency_key="big")
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(client.capacity().entries) == []


def test_a_revoked_token_is_refused(dave: Any, broker: BrokerRuntime) -> None:
    """Revocation reaches the broker: at once for a token it has not seen, within the
    interceptor's AUTH_CACHE_SECONDS for one it has."""
    row, token = registry_services.token_create(user=dave, name="soon revoked")
    registry_services.token_revoke(token=row)
    client = BrokerClient(f"127.0.0.1:{broker.port}", token)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            client.bookings()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()
