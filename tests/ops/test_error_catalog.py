"""The error catalog (``protos.errors``): every error the platform answers with, raised through
every door, is answered as its entry declares (issue 16).

The doors are the real ones: the REST exception handler and the database middleware, the
``ErrorInterceptor`` (``registry.rpc``) as the broker and the telemetry server configure it and
the agent's ``rpc_errors`` on real gRPC servers on loopback (the telemetry server answering
through it: ``tests/verification/test_telemetry.py``), the command line's exit status read from
the status a real call ended with, and the portal's message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import DataError, InterfaceError, OperationalError
from django.test import RequestFactory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agent import errors as agent_errors
from agent.benchmark import ChallengeRunning
from agent.server import rpc_errors
from brokers.client.cli import exit_status_of
from brokers.errors import (
    CapacityExhausted,
    IdempotencyKeyReused,
    QuotaExceeded,
    RetryableConflict,
)
from brokers.ledger import DeadlineExceeded
from brokers.market import NeedsPreemption, OfferExpired
from brokers.rpc.servicer import ERROR_FIELD as BROKER_ERROR_FIELD
from interconnect.middleware import DatabaseUnavailableMiddleware
from protos.errors import DOMAIN, ERRORS, Catalogued, ErrorSpec, exit_status
from registry.api.exceptions import exception_handler
from registry.errors import (
    BUILTIN_ERRORS,
    NoCertificateAuthority,
    StaleVersion,
    portal_error,
    reason_of,
    spec_for,
)
from registry.rpc import ErrorInterceptor
from verification.errors import UnknownPool
from verification.rpc.telemetry import ERROR_FIELD as TELEMETRY_ERROR_FIELD


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


# One instance of every error class that reaches a door (a new class must be added here: the
# completeness test below fails until it is).
SAMPLES: list[BaseException] = [
    StaleVersion(7),
    NoCertificateAuthority(),
    CapacityExhausted("Not enough free accelerators.", code="booking.no_placement"),
    QuotaExceeded("Quota exceeded.", code="quota.max_concurrent_accelerators"),
    NeedsPreemption("Not enough free accelerators on CN-T-T-0001-P001 for the whole window."),
    OfferExpired(
        SimpleNamespace(  # type: ignore[arg-type]
            national_id="OF-20261201-00000001", expires_at=dt.datetime(2026, 12, 1, 8, 0)
        )
    ),
    RetryableConflict("The ledger was busy."),
    IdempotencyKeyReused("run-1", "BK-20261201-00000001"),
    DeadlineExceeded("The deadline passed."),
    UnknownPool("CN-X-Y-0001-P001"),
    ValidationError({"count": ["Ensure this value is greater than or equal to 1."]}),
    ValidationError("A message on no field."),
    DataError("integer out of range"),
    ObjectDoesNotExist("Booking matching query does not exist."),
    PermissionDenied("Only the firm's admins may do that."),
    OperationalError("server closed the connection unexpectedly"),
    InterfaceError("connection already closed"),
]
AGENT_SAMPLES: list[agent_errors.AgentError] = [
    agent_errors.AgentError("boom"),
    agent_errors.InvalidArgument("matrix_size", "must be positive"),
    agent_errors.NotFound("no pool p9"),
    agent_errors.Unavailable("busy"),
    agent_errors.FailedPrecondition("not committed yet"),
    ChallengeRunning("c-1"),
    agent_errors.ResourceExhausted("too large"),
]


def test_the_catalog_is_well_formed() -> None:
    for reason, spec in ERRORS.items():
        assert spec.reason == reason
        assert 400 <= spec.http < 600
        assert spec.grpc_code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
        assert spec.exit != 0 and 0 < spec.exit < 128
    # Retrying is safe exactly for the entries the command line tells to run again.
    assert {s.exit for s in ERRORS.values() if s.retryable} == {75}
    # Every Catalogued class and every Django mapping points into the catalog.
    for cls in _subclasses(Catalogued):
        assert ERRORS[cls.spec.reason] is cls.spec, cls
    for _, spec in BUILTIN_ERRORS:
        assert ERRORS[spec.reason] is spec


def test_every_error_class_has_a_sample_here() -> None:
    sampled = {type(e) for e in [*SAMPLES, *AGENT_SAMPLES]}
    missing = {c for c in _subclasses(Catalogued) if c not in sampled}
    assert missing == set()
    assert {cls for cls, _ in BUILTIN_ERRORS} <= {base for e in SAMPLES for base in type(e).__mro__}


def test_the_documented_mappings() -> None:
    """The README's and docs' table: StaleVersion is ABORTED (and 409), capacity is
    RESOURCE_EXHAUSTED, a tenant's foreign object is NOT_FOUND."""
    assert spec_for(StaleVersion(1)) == ERRORS["version.stale"]
    assert ERRORS["version.stale"].grpc_code is grpc.StatusCode.ABORTED
    assert ERRORS["version.stale"].http == 409
    assert spec_for(QuotaExceeded("q")).grpc_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert spec_for(ObjectDoesNotExist()).grpc_code is grpc.StatusCode.NOT_FOUND
    assert spec_for(ValueError("not ours")) is None  # unexpected: a server error, logged


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_the_rest_door_answers_the_declared_status(exc: BaseException) -> None:
    spec = spec_for(exc)
    assert spec is not None
    if spec.reason == "database.unavailable":
        request = RequestFactory().get("/api/v1/centers/")
        response: Any = DatabaseUnavailableMiddleware(lambda r: None).process_exception(  # type: ignore[arg-type, return-value]
            request, exc
        )
        assert response.status_code == spec.http
        assert response["Retry-After"]
        return
    response = exception_handler(exc, {})
    assert response is not None and response.status_code == spec.http
    body = response.data
    if isinstance(exc, ValidationError):
        assert "count" in body or "non_field_errors" in body
    elif spec.reason not in ("invalid", "permission_denied", "not_found"):
        assert body["code"] == reason_of(exc)
        assert body.get("retryable", False) == spec.retryable
    assert "matching query" not in str(body)  # a model's name never leaks


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_the_portal_says_what_failed_and_whether_to_retry(exc: BaseException) -> None:
    spec = spec_for(exc)
    assert spec is not None
    message = portal_error(exc, "Not booked")
    assert message.startswith("Not booked: ")
    assert ("safe to try again" in message) == spec.retryable


# --- The gRPC doors, on real servers --------------------------------------------------------------


def _raising(errors: list[BaseException]) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise errors[int(request)]

    return behaviour


def _server(
    handlers: dict[str, grpc.RpcMethodHandler], interceptors: list[Any] | None = None
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("interconnect.test.Catalog", handlers)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def doors() -> Iterator[dict[str, Callable[[int], grpc.RpcError]]]:
    """``{door: call(i) -> the RpcError the i-th sample ended with}`` for the three servers."""

    @rpc_errors
    def agent(self: object, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise AGENT_SAMPLES[int(request)]

    servers = [
        _server(
            {"Broker": grpc.unary_unary_rpc_method_handler(_raising(SAMPLES))},
            [ErrorInterceptor(field=BROKER_ERROR_FIELD, server="broker")],
        ),
        _server(
            {"Telemetry": grpc.unary_unary_rpc_method_handler(_raising(SAMPLES))},
            [ErrorInterceptor(field=TELEMETRY_ERROR_FIELD, server="telemetry")],
        ),
        _server({"Agent": grpc.unary_unary_rpc_method_handler(lambda r, c: agent(None, r, c))}),
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _, port in servers]

    def caller(channel: grpc.Channel, method: str) -> Callable[[int], grpc.RpcError]:
        stub = channel.unary_unary(f"/interconnect.test.Catalog/{method}")

        def call(i: int) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as raised:
                stub(str(i).encode(), timeout=10)
            return raised.value

        return call

    yield {
        "broker": caller(channels[0], "Broker"),
        "telemetry": caller(channels[1], "Telemetry"),
        "agent": caller(channels[2], "Agent"),
    }
    for channel in channels:
        channel.close()
    for server, _ in servers:
        server.stop(None)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == DOMAIN
            return info.reason
    return ""


def _check(error: grpc.RpcError, exc: BaseException, spec: ErrorSpec) -> None:
    assert error.code() is spec.grpc_code, (type(exc).__name__, error.details())  # type: ignore[attr-defined]
    if not isinstance(exc, ValidationError):
        assert _reason(error) == reason_of(exc)
    # The command line exits with the catalog's status for what the call ended with.
    assert exit_status_of(error) == spec.exit


@pytest.mark.parametrize("door", ["broker", "telemetry"])
def test_every_grpc_door_of_the_platform_answers_as_declared(
    door: str, doors: dict[str, Callable[[int], grpc.RpcError]]
) -> None:
    for i, exc in enumerate(SAMPLES):
        spec = spec_for(exc)
        assert spec is not None
        _check(doors[door](i), exc, spec)


def test_bad_input_carries_its_field_violations(
    doors: dict[str, Callable[[int], grpc.RpcError]],
) -> None:
    i = next(i for i, e in enumerate(SAMPLES) if isinstance(e, ValidationError))
    for door in ("broker", "telemetry"):
        status = rpc_status.from_call(doors[door](i))  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == ["count"]


def test_a_message_on_no_field_is_reported_under_the_doors_field(
    doors: dict[str, Callable[[int], grpc.RpcError]],
) -> None:
    """The broker's requests carry a ``spec``, the telemetry server's a ``request``."""
    i = next(i for i, e in enumerate(SAMPLES) if str(e) == "['A message on no field.']")
    for door, field in (("broker", BROKER_ERROR_FIELD), ("telemetry", TELEMETRY_ERROR_FIELD)):
        status = rpc_status.from_call(doors[door](i))  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert [v.field for v in bad.field_violations] == [field]
    assert (BROKER_ERROR_FIELD, TELEMETRY_ERROR_FIELD) == ("spec", "request")


def test_the_agent_answers_as_declared(
    doors: dict[str, Callable[[int], grpc.RpcError]],
) -> None:
    for i, exc in enumerate(AGENT_SAMPLES):
        error = doors["agent"](i)
        assert error.code() is exc.spec.grpc_code  # type: ignore[attr-defined]
        assert _reason(error) == exc.reason
        assert exit_status(error.code()) == exc.spec.exit  # type: ignore[attr-defined]


def test_an_unexpected_error_is_internal_at_every_door_and_leaks_nothing(
    doors: dict[str, Callable[[int], grpc.RpcError]],
) -> None:
    """The adversary: an exception the catalog does not know (a bug) must not be answered with
    its message (it may hold SQL, paths or another tenant's data)."""
    secret = RuntimeError("SELECT * FROM registry_pool WHERE operator = 'rival'")
    SAMPLES.append(secret)
    AGENT_SAMPLES.append(secret)  # type: ignore[arg-type]
    try:
        for door, i in (
            ("broker", len(SAMPLES) - 1),
            ("telemetry", len(SAMPLES) - 1),
            ("agent", len(AGENT_SAMPLES) - 1),
        ):
            error = doors[door](i)
            assert error.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
            assert "registry_pool" not in (error.details() or "")  # type: ignore[attr-defined]
            assert exit_status_of(error) == ERRORS["internal"].exit
    finally:
        SAMPLES.pop()
        AGENT_SAMPLES.pop()
    assert exception_handler(secret, {}) is None  # REST: Django's 500, without the message
