"""One mistake, one message, at every door (REST, gRPC, the command line; the portal's form is
in tests/portal/test_forms.py): unknown names refused with close matches, the limits of
``brokers.limits``, and an idempotency key reused for another request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from brokers import limits
from brokers.client import cli
from brokers.client.client import BrokerClient, workload_spec
from brokers.rpc.server import BrokerRuntime, build_server
from registry import services as registry_services
from tests.brokers.conftest import next_hour

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN_MODEL = 'Unknown accelerator model "nvidia-b200". Did you mean'


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


@pytest.fixture
def doors(broker: BrokerRuntime, dave: Any, api_as: Any) -> Iterator[dict[str, Any]]:
    _, token = registry_services.token_create(user=dave, name="doors")
    client = BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=10)
    yield {
        "rest": api_as(dave),
        "grpc": client,
        "token": token,
        "target": f"127.0.0.1:{broker.port}",
    }
    client.close()


def violations(exc: grpc.RpcError) -> dict[str, list[str]]:
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    out: dict[str, list[str]] = {}
    for detail in rpc_status.from_call(exc).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            for v in bad.field_violations:
                out.setdefault(v.field, []).append(v.description)
    return out


def reason(exc: grpc.RpcError) -> str:
    for detail in rpc_status.from_call(exc).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def cli_run(doors: dict[str, Any], capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--broker", doors["target"], "--token", doors["token"], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def body(**values: Any) -> dict[str, Any]:
    spec = {
        "accelerator_model": "nvidia-a100-80g",
        "count": 8,
        "earliest_start": next_hour().isoformat(),
        "duration_seconds": 3600,
    }
    spec.update(values)
    return spec


# (REST/gRPC spec field, value, CLI arguments, the start of the message, a close match)
UNKNOWN = [
    ("accelerator_model", "nvidia-b200", ["--model", "nvidia-b200"], UNKNOWN_MODEL, "nvidia-h200"),
    ("hubs_allowed", ["NXX"], ["--hub", "NXX"], 'Unknown hub "NXX". Did you mean', "NX"),
    ("data_hub", "BTHH", ["--data-hub", "BTHH"], 'Unknown hub "BTHH".', "BTH"),
    ("traits", ["rdmaa"], ["--trait", "rdmaa"], 'Unknown trait "rdmaa". Did you mean', "rdma"),
    (
        "interconnect",
        "infinibnd",
        ["--interconnect", "infinibnd"],
        'Unknown interconnect "infinibnd".',
        "infiniband",
    ),
]


def test_unknown_names_are_refused_with_close_matches_at_every_door(
    doors: dict[str, Any], acme: Any, active_pool: Any, capsys: Any
) -> None:
    active_pool(acme, size=8)
    rest, client = doors["rest"], doors["grpc"]
    for field, value, args, message, close in UNKNOWN:
        base = {"accelerator_model": "nvidia-a100-80g", "count": 8}
        if field == "data_hub":
            base["data_gb"] = 10
        values = {**base, field: value}
        # REST: placement and booking, 400 naming the field.
        placed = rest.post("/api/v1/placements/", body(**values), format="json")
        assert placed.status_code == 400, placed.content
        assert placed.json()[field][0].startswith(message) and close in placed.json()[field][0]
        booked = rest.post(
            "/api/v1/bookings/",
            {"spec": body(**values), "idempotency_key": f"k-{field}"},
            format="json",
        )
        assert booked.status_code == 400 and booked.json()[field] == placed.json()[field]
        # gRPC: INVALID_ARGUMENT with the same field violation, for Place and Book.
        pb_values = {k: v for k, v in values.items()}
        spec = workload_spec(earliest_start=next_hour(), **pb_values)
        for call, kwargs in ((client.place, {}), (client.book, {"idempotency_key": field})):
            with pytest.raises(grpc.RpcError) as caught:
                call(spec, **kwargs)
            assert violations(caught.value) == {field: placed.json()[field]}
        # The command line: the same message, once, naming the flag; exit 1.
        extra = ["--data-gb", "10"] if field == "data_hub" else []
        base_args = [] if field == "accelerator_model" else ["--model", "nvidia-a100-80g"]
        for verb in ("place", "book"):
            code, out, err = cli_run(doors, capsys, verb, *base_args, "--count", "8", *args, *extra)
            assert code == 1 and message in err and close in err, err
            assert err.count("Unknown") == 1, err
    # Capacity: model, hub, cluster and interconnect, at each door (REST names its own param).
    for param, pb_field, value, flag, close in [
        ("accelerator", "accelerator_model", "nvidia-b200", "--model", "nvidia-h200"),
        ("hub", "hub", "nx", "--hub", "NX"),
        ("cluster", "cluster", "ZWW", "--cluster", "ZW"),
        ("interconnect", "interconnect", "nvlnk", "--interconnect", "nvlink"),
    ]:
        answer = rest.get("/api/v1/capacity/", {param: value})
        assert answer.status_code == 400, answer.content
        assert close in answer.json()[param][0] and "Unknown" in answer.json()[param][0]
        with pytest.raises(grpc.RpcError) as caught:
            client.capacity(**{pb_field: value})
        assert violations(caught.value)[pb_field] == answer.json()[param]
        code, out, err = cli_run(doors, capsys, "capacity", flag, value)
        assert code == 1 and answer.json()[param][0] in err and flag in err, err
    # A known name with no free capacity is not an error: an empty answer.
    assert rest.get("/api/v1/capacity/", {"hub": "GZ"}).json()["results"] == []


def test_limits_say_the_same_at_every_door(
    doors: dict[str, Any], acme: Any, active_pool: Any, capsys: Any
) -> None:
    active_pool(acme, size=8)
    rest, client = doors["rest"], doors["grpc"]
    for seconds in (0.5, -7200, 367 * 86400):
        answer = rest.post("/api/v1/placements/", body(duration_seconds=seconds), format="json")
        assert answer.json() == {"duration_seconds": [limits.DURATION_MESSAGE]}
        with pytest.raises(grpc.RpcError) as caught:
            client.place(
                workload_spec(
                    accelerator_model="nvidia-a100-80g", count=8, duration_seconds=seconds
                )
            )
        assert violations(caught.value) == {"duration_seconds": [limits.DURATION_MESSAGE]}
    for count in (0, 100_001):
        answer = rest.post("/api/v1/placements/", body(count=count), format="json")
        assert answer.json() == {"count": [limits.COUNT_MESSAGE]}, answer.content
    with pytest.raises(grpc.RpcError) as caught:
        client.place(workload_spec(accelerator_model="nvidia-a100-80g", count=0))
    assert violations(caught.value) == {"count": [limits.COUNT_MESSAGE]}
    # The command line refuses what it cannot send faithfully, with the same sentence (exit 2):
    # --duration 0 is not an hour, --count -4 not a protobuf range error, -2h not a usage dump.
    for args, field, message in [
        (["--duration", "0"], "duration", limits.DURATION_MESSAGE),
        (["--duration", "-2h"], "duration", limits.DURATION_MESSAGE),
        (["--duration=30s"], "duration", limits.DURATION_MESSAGE),
        (["--count", "-4"], "count", limits.COUNT_MESSAGE),
        (["--count", "0"], "count", limits.COUNT_MESSAGE),
    ]:
        spec_args = ["--model", "nvidia-a100-80g", "--count", "8", *args]
        code, out, err = cli_run(doors, capsys, "place", *spec_args)
        assert code == 2, err
        assert err == f"error: invalid argument\n  {field}: {message} [{cli.FLAGS[field]}]\n"


def test_an_idempotency_key_answers_only_the_request_it_was_first_used_for(
    doors: dict[str, Any], acme: Any, active_pool: Any, capsys: Any
) -> None:
    active_pool(acme, size=16)
    rest, client = doors["rest"], doors["grpc"]
    start = next_hour()
    first = rest.post(
        "/api/v1/bookings/",
        {"spec": body(count=8, earliest_start=start.isoformat()), "idempotency_key": "same"},
        format="json",
    )
    assert first.status_code == 201, first.content
    booking = first.json()["national_id"]
    # The same request again, through REST and through gRPC (another door, the same request):
    # the first booking.
    again = rest.post(
        "/api/v1/bookings/",
        {"spec": body(count=8, earliest_start=start.isoformat()), "idempotency_key": "same"},
        format="json",
    )
    assert again.json()["national_id"] == booking
    same = workload_spec(
        accelerator_model="nvidia-a100-80g", count=8, earliest_start=start, duration_seconds=3600
    )
    assert client.book(same, idempotency_key="same").booking_id == booking
    # Another request under that key: refused, never answered with the first booking.
    other = rest.post(
        "/api/v1/bookings/",
        {"spec": body(count=16, earliest_start=start.isoformat()), "idempotency_key": "same"},
        format="json",
    )
    assert other.status_code == 422, other.content
    assert other.json()["code"] == "booking.idempotency_key_reused"
    assert booking in other.json()["detail"] and '"same"' in other.json()["detail"]
    for changed in (
        workload_spec(accelerator_model="nvidia-a100-80g", count=16, earliest_start=start),
        workload_spec(
            accelerator_model="nvidia-a100-80g",
            count=8,
            earliest_start=start,
            duration_seconds=7200,
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            client.book(changed, idempotency_key="same")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(caught.value) == "booking.idempotency_key_reused"
        assert caught.value.details() == other.json()["detail"]
    with pytest.raises(grpc.RpcError) as caught:
        client.book(same, idempotency_key="same", hold=True)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    code, out, err = cli_run(
        doors,
        capsys,
        "book",
        "--model",
        "nvidia-a100-80g",
        "--count",
        "16",
        "--start",
        start.isoformat(),
        "--key",
        "same",
    )
    assert code == 1 and "FAILED_PRECONDITION" in err and other.json()["detail"] in err
    assert "reason: booking.idempotency_key_reused" in err
    from brokers.models import Booking

    assert Booking.objects.count() == 1
