"""Fuzzing the gRPC broker (issue 7, RELIABILITY G9): two layers.

1. Structured: hypothesis builds every request message of every ``Broker`` method from its
   descriptor, with oversized, empty, negative, non-finite, far-past/far-future and contradictory
   values. Each answer is OK or a deliberate status (INVALID_ARGUMENT, NOT_FOUND, ...): never
   INTERNAL or UNKNOWN from our code.
2. Raw bytes: random byte strings sent as requests. Most do not parse and only gRPC's own
   "cannot deserialize" answer may be INTERNAL; the ones that parse as a message reach our
   handlers (counted by the broker's metrics interceptor) and must get a deliberate status.

Plus the message size limit: a request over the server's limit is refused by gRPC itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.rpc.server import BrokerRuntime, build_server
from interconnect.metrics import GRPC_LATENCY
from protos import broker_pb2 as pb
from registry import services as registry_services
from tests.figures import figure

pytestmark = pytest.mark.django_db(transaction=True)

SERVICE = pb.DESCRIPTOR.services_by_name["Broker"]
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
EXAMPLES = 30

NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", " ", "nvidia-a100-80g", "BTH", "NX", "CN-NX-ZW-0001-P01", "-1", "1e309", "NaN",
         "12.50", "'; DROP TABLE registry_pool; --", "\x00", "🚀" * 10, "a" * 5000]
    ),
)  # fmt: skip


def _value(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return st.builds(
                lambda s, n: {"seconds": s, "nanos": n},
                st.integers(-62135596800, 253402300799),
                st.integers(0, 999_999_999),
            )
        if depth > 2:
            return st.just({})
        return message_dicts(field.message_type, depth + 1)
    if t == d.FieldDescriptor.TYPE_STRING:
        return NASTY_TEXT
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64)
    if t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7, 8, 4096, 2**31]))
    if t in (d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t in (d.FieldDescriptor.TYPE_INT64, d.FieldDescriptor.TYPE_SINT64):
        return st.integers(-(2**63), 2**63 - 1)
    return st.integers(-(2**31), 2**31 - 1)


def message_dicts(message: d.Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of field values for ``message`` (a random subset of fields set)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in message.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        value = _value(field, depth)
        if field.is_repeated:
            value = st.lists(value, max_size=4)
        fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def _fill(msg: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            target = getattr(msg, name)
            for item in value:
                if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
            _fill(getattr(msg, name), value)
        else:
            setattr(msg, name, value)
    return msg


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def _call(channel: grpc.Channel, method: d.MethodDescriptor, request: bytes, token: str) -> Any:
    path = f"/{SERVICE.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),)
    if method.server_streaming:
        stream = channel.unary_stream(path)(request, metadata=metadata, timeout=5)
        try:
            next(iter(stream))
        except StopIteration:
            pass
        finally:
            stream.cancel()
        return None
    return channel.unary_unary(path)(request, metadata=metadata, timeout=5)


def test_hypothesis_requests_never_reach_an_internal_error(
    broker: BrokerRuntime, dave: Any, acme: Any, make_pool: Any
) -> None:
    make_pool(acme, "active")
    _, token = registry_services.token_create(user=dave, name="fuzz")
    channel = grpc.insecure_channel(f"127.0.0.1:{broker.port}")
    codes: dict[str, int] = {}
    internal: list[tuple[str, str]] = []

    def make_fuzz(method: d.MethodDescriptor) -> Any:
        request_class = pb.__dict__[method.input_type.name]

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(values=message_dicts(method.input_type))
        def fuzz(values: dict[str, Any]) -> None:
            request = _fill(request_class(), values).SerializeToString()
            try:
                _call(channel, method, request, token)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.CANCELLED:
                    code = grpc.StatusCode.OK  # our own cancel of a healthy stream
                if code not in ALLOWED:
                    internal.append((method.name, f"{code}: {exc.details()}"))
            codes[code.name] = codes.get(code.name, 0) + 1

        return fuzz

    for method in SERVICE.methods:
        make_fuzz(method)()
    channel.close()
    figure("G9.grpc_fuzz_structured", methods=len(SERVICE.methods), calls=sum(codes.values()),
           codes=codes, internal_or_unknown=len(internal))  # fmt: skip
    assert internal == []
    assert codes.get("INVALID_ARGUMENT", 0) > 0  # the fuzzer did reach validation


def _handled_calls() -> float:
    """Calls that reached the broker's handlers: counted by its outermost interceptor, after
    gRPC deserialized the request (a request it cannot parse never gets there)."""
    return sum(
        sample.value
        for metric in GRPC_LATENCY.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


def test_random_bytes_never_cause_an_internal_error(broker: BrokerRuntime, dave: Any) -> None:
    """Random bytes as requests: most do not parse and gRPC refuses them before our code
    (INTERNAL "Exception deserializing request!"); the ones that do parse as a message (protobuf
    accepts many short byte strings) reach the handlers and must get a deliberate status."""
    _, token = registry_services.token_create(user=dave, name="fuzz")
    channel = grpc.insecure_channel(f"127.0.0.1:{broker.port}")
    ours: list[str] = []
    codes: dict[str, int] = {}
    not_parsed = 0
    handled_before = _handled_calls()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(method=st.sampled_from(list(SERVICE.methods)), raw=st.binary(max_size=512))
    def fuzz(method: d.MethodDescriptor, raw: bytes) -> None:
        nonlocal not_parsed
        try:
            _call(channel, method, raw, token)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.CANCELLED:
                code = grpc.StatusCode.OK  # our own cancel of a healthy stream
            elif code not in ALLOWED:
                # gRPC's own refusal to parse bytes is INTERNAL "Exception deserializing
                # request!"; anything else INTERNAL/UNKNOWN came from our code.
                if "deserializ" in (exc.details() or "").lower():
                    not_parsed += 1
                    code = None
                else:
                    ours.append(f"{method.name}: {exc.code()} {exc.details()}")
        if code is not None:
            codes[code.name] = codes.get(code.name, 0) + 1

    fuzz()
    channel.close()
    calls = not_parsed + sum(codes.values())
    reached = int(_handled_calls() - handled_before)
    figure(
        "G9.grpc_fuzz_raw",
        calls=calls,
        refused_by_grpc_unparsed=not_parsed,
        reached_our_code=reached,
        codes_from_our_code=codes,
        internal_from_our_code=len(ours),
    )
    assert ours == []
    # Every call is one or the other: refused unparsed by gRPC, or answered by our handlers.
    assert reached == calls - not_parsed


def test_an_oversized_request_is_refused_by_the_message_limit(
    broker: BrokerRuntime, dave: Any
) -> None:
    _, token = registry_services.token_create(user=dave, name="fuzz")
    channel = grpc.insecure_channel(
        f"127.0.0.1:{broker.port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    huge = pb.QueryCapacityRequest(accelerator_model="x" * (5 * 1024 * 1024)).SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        _call(channel, SERVICE.methods_by_name["QueryCapacity"], huge, token)
    channel.close()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
