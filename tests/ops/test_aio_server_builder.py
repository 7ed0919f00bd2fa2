"""The aio variant of the one gRPC server builder (``rpckit.aio.build_aio_server``, the
broker's): health and reflection, synchronous interceptors whose ``abort`` ends the aio call,
the message limit, the graceful stop (the in-flight call finishes, new calls are refused, the
owner's cleanup runs after; NOT_SERVING first is tests/brokers/test_grpc.py's). A toy servicer
of the broker's service: no Django, no database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import broker_pb2 as pb
from protos import broker_pb2_grpc
from rpckit.aio import AioRuntime, build_aio_server
from rpckit.interceptors import wrap
from rpckit.server import Service

SERVICE = pb.DESCRIPTOR.services_by_name["Broker"].full_name
LIMIT = 64 * 1024


class SlowBroker(broker_pb2_grpc.BrokerServicer):
    """QueryCapacity answers after ``delay`` seconds with the page token it was sent."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.started = threading.Event()

    def QueryCapacity(self, request: Any, context: Any) -> Any:
        self.started.set()
        time.sleep(self.delay)
        return pb.QueryCapacityResponse(next_page_token=request.page_token)


class Refuse(grpc.ServerInterceptor):
    """Aborts PERMISSION_DENIED when the caller sends ``x-refuse``: a synchronous interceptor's
    abort must become the aio call's status."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return handler

        def around(behaviour: Callable[..., Any], request: Any, context: Any) -> Any:
            if dict(context.invocation_metadata() or ()).get("x-refuse"):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused by the interceptor")
            return behaviour(request, context)

        return wrap(handler, around)


@pytest.fixture
def served() -> Iterator[tuple[AioRuntime, SlowBroker, list[str]]]:
    servicer = SlowBroker()
    runtime = build_aio_server(
        "127.0.0.1:0",
        name="toy",
        services=[Service(SERVICE, broker_pb2_grpc.add_BrokerServicer_to_server, servicer)],
        interceptors=[Refuse()],
        max_workers=2,
        max_message_bytes=LIMIT,
    )
    cleaned: list[str] = []
    runtime.on_stopped.append(lambda: cleaned.append("cleaned"))
    yield runtime, servicer, cleaned
    runtime.stop(0).wait(10)


def test_health_reflection_interceptors_and_limits(
    served: tuple[AioRuntime, SlowBroker, list[str]],
) -> None:
    runtime, _, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        stub = broker_pb2_grpc.BrokerStub(channel)
        assert (
            stub.QueryCapacity(pb.QueryCapacityRequest(page_token="a"), timeout=5).next_page_token
            == "a"
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.QueryCapacity(pb.QueryCapacityRequest(), metadata=[("x-refuse", "1")], timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == "refused by the interceptor"
        with pytest.raises(grpc.RpcError) as too_big:
            stub.QueryCapacity(pb.QueryCapacityRequest(page_token="x" * (LIMIT + 1)), timeout=5)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A method the server does not have.
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_graceful_stop_lets_the_call_in_flight_finish_and_refuses_new_ones(
    served: tuple[AioRuntime, SlowBroker, list[str]],
) -> None:
    runtime, servicer, cleaned = served
    servicer.delay = 2.0
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        in_flight = stub.QueryCapacity.future(
            pb.QueryCapacityRequest(page_token="late"), timeout=10
        )
        assert servicer.started.wait(5)
        stopped = runtime.stop(grace=5)
        assert runtime.stop() is stopped  # a second stop waits for the same one
        time.sleep(0.3)  # the stop reaches the event loop
        with pytest.raises(grpc.RpcError) as refused:
            stub.QueryCapacity(pb.QueryCapacityRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done() and cleaned == []
        assert in_flight.result().next_page_token == "late"
        assert stopped.wait(10)
        assert cleaned == ["cleaned"]
        assert not runtime.thread.is_alive()
