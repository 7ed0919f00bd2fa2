"""A client's chosen option obeys the client's own specification, at every door.

A booking may name its pools (``option``: pool national ids and counts). Placement would never
propose a pool over the spec's price cap (for spot, the spot price), in a hub or center the spec
excludes, lacking a trait it requires, or a split the spec does not allow; a chosen option that
does any of it is refused the same way at every door (REST 400, gRPC INVALID_ARGUMENT, the CLI's
field line, the portal's message), on the field ``option``, with the pool, the placement reason
code and placement's own sentence, and nothing is written.

Each attack is what a client (or a buggy one retrying with a changed option) would send.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from brokers import services
from brokers.client.client import BrokerClient, workload_spec
from brokers.models import Allocation, Booking, BookingEvent
from brokers.placement import catalog
from brokers.rpc.server import BrokerRuntime, build_server
from registry import services as registry_services
from registry.models import Pool
from tests.brokers.broker_testing import run_cli
from tests.brokers.conftest import next_hour, spec


def refused(pool: str, code: str, detail: str) -> str:
    """What every door says of a pool placement would not propose for the spec."""
    if pool:
        return f"{pool} is refused by placement ({code}): {detail}."
    return f"The option is refused by placement ({code}): {detail}."


@dataclass
class Attack:
    """A spec (``WorkloadSpec`` fields), the option sent with it, and the refusal expected."""

    name: str
    fields: dict[str, Any]
    option: list[tuple[str, int]]
    messages: list[str]
    cli: list[str] = field(default_factory=list)  # the same spec as CLI flags (None: no flag)
    cli_ok: bool = True


@dataclass
class Scene:
    near: Pool  # hub NX (cluster ZW), 10.00 CNY, 20% spot discount, no traits
    far: Pool  # hub IM (cluster HRG), 10.00 CNY, another center


@pytest.fixture
def scene(acme: Any, active_pool: Any) -> Scene:
    near = active_pool(acme, size=8, price="10.00", spot_discount_percent=Decimal("20"))
    far = active_pool(acme, size=8, price="10.00", cluster="HRG")
    return Scene(near=near, far=far)


def attacks(s: Scene) -> list[Attack]:
    near, far = s.near.national_id, s.far.national_id
    center = s.near.center.national_id
    return [
        Attack(
            "reserved over its price cap",
            {"price_cap": Decimal("9.50")},
            [(near, 4)],
            [
                refused(
                    near, "price.over_cap", "10.0000 CNY/accelerator-hour is over the cap 9.5000"
                )
            ],
            ["--price-cap", "9.50"],
        ),
        Attack(
            "spot over its price cap (the spot price)",
            {"price_cap": Decimal("7.50"), "booking_class": "spot"},
            [(near, 4)],
            [
                refused(
                    near,
                    "price.over_cap",
                    "spot price 8.0000 CNY/accelerator-hour (10.0000 less 20.00%) is over "
                    "the cap 7.5000",
                )
            ],
            ["--price-cap", "7.50", "--spot"],
        ),
        Attack(
            "in an excluded hub",
            {"hubs_excluded": ("NX",)},
            [(near, 4)],
            [refused(near, "hub.excluded", "hub NX is excluded")],
            ["--exclude-hub", "NX"],
        ),
        Attack(
            "outside the allowed hubs",
            {"hubs_allowed": ("IM",)},
            [(near, 4)],
            [refused(near, "hub.not_allowed", "hub NX is not allowed")],
            ["--hub", "IM"],
        ),
        Attack(
            "in an excluded center",
            {"centers_excluded": (center,)},
            [(near, 4)],
            [refused(near, "center.excluded", f"center {center} is excluded")],
            cli_ok=False,  # the CLI has no flag for it
        ),
        Attack(
            "missing a required trait",
            {"traits": ("rdma",)},
            [(near, 4)],
            [refused(near, "traits.missing", "lacks rdma")],
            ["--trait", "rdma"],
        ),
        Attack(
            "short of the memory asked for",
            {"memory_gb_per_accelerator": 96.0},
            [(near, 4)],
            [refused(near, "memory.insufficient", "80.0 GB per accelerator, 96.0 GB needed")],
            ["--memory-gb", "96"],
        ),
        Attack(
            "split over more centers than max_centers",
            {"allow_split": True, "max_centers": 1, "count": 8},
            [(near, 4), (far, 4)],
            [
                refused(
                    "",
                    "split.too_many_centers",
                    "the option spans 2 centers, at most 1 allowed (max_centers)",
                )
            ],
            ["--split", "--max-centers", "1"],
        ),
        Attack(
            "split without allow_split",
            {"count": 8},
            [(near, 4), (far, 4)],
            [
                refused(
                    "",
                    "split.not_allowed",
                    "the option spans 2 pools and the specification does not allow a split "
                    "(allow_split)",
                )
            ],
            [],
        ),
    ]


def _attack(scene: Scene, index: int) -> Attack:
    return attacks(scene)[index]


N_ATTACKS = 9


def nothing_written() -> None:
    assert not Booking.objects.exists()
    assert not Allocation.objects.exists()
    assert not BookingEvent.objects.exists()


def rest_body(attack: Attack) -> dict[str, Any]:
    fields = {
        "accelerator_model": "nvidia-a100-80g",
        "count": 4,
        "earliest_start": next_hour().isoformat(),
        "duration_seconds": 3600,
    }
    for key, value in attack.fields.items():
        fields[key] = list(value) if isinstance(value, tuple) else value
        if isinstance(value, Decimal):
            fields[key] = str(value)
    return {
        "spec": fields,
        "idempotency_key": "attack",
        "option": [{"pool": p, "accelerators": n} for p, n in attack.option],
    }


# --- the service, REST and the portal (one database transaction each) ---------------------


@pytest.mark.django_db
@pytest.mark.parametrize("index", range(N_ATTACKS))
@pytest.mark.parametrize("snapshot", [False, True], ids=["sql", "snapshot"])
def test_rest_refuses_an_option_placement_would_not_propose(
    index: int, snapshot: bool, scene: Scene, dave: Any, api_as: Any, settings: Any
) -> None:
    attack = _attack(scene, index)
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
    catalog.invalidate()
    try:
        answer = api_as(dave).post("/api/v1/bookings/", rest_body(attack), format="json")
        assert answer.status_code == 400, answer.content
        assert answer.json() == {"option": attack.messages}, attack.name
        nothing_written()
        # Placement itself proposes no such option for the same spec, and refuses the pool for
        # the same reason (its explanation counts).
        the_spec = spec(**attack.fields).validated(now=dt.datetime.now(dt.UTC))
        placed = services.placement_preview(spec=the_spec, actor=dave, max_options=20)
        proposed = [sorted((p.pool, p.accelerators) for p in o.parts) for o in placed.options]
        assert sorted(attack.option) not in proposed
        for message in attack.messages:
            if not message.startswith("The option"):
                code = message.split("(", 1)[1].split(")", 1)[0]
                assert placed.prefiltered.get(code, 0) >= 1, (attack.name, placed.prefiltered)
    finally:
        catalog.invalidate()


@pytest.mark.django_db
@pytest.mark.parametrize("index", range(N_ATTACKS))
def test_the_portal_refuses_a_tampered_option_with_the_same_message(
    index: int, scene: Scene, dave: Any
) -> None:
    attack = _attack(scene, index)
    client = Client()
    client.force_login(dave, backend="django.contrib.auth.backends.ModelBackend")
    the_spec = spec(**attack.fields)
    response = client.post(
        "/bookings/new/",
        {
            "spec": json.dumps(the_spec.to_json()),
            "option": json.dumps([[p, n] for p, n in attack.option]),
            "idempotency_key": "attack",
        },
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert shown == [" ".join(attack.messages)], attack.name
    nothing_written()


@pytest.mark.django_db
def test_the_options_that_keep_to_the_spec_book_at_the_price_checked(
    scene: Scene, dave: Any
) -> None:
    """The controls: the same pools within the spec book, and a spot booking is charged the
    spot price its cap was checked against (8.0000 within a cap of 8)."""
    near, far = scene.near.national_id, scene.far.national_id
    booked = services.booking_create(
        spec=spec(price_cap=Decimal("8"), booking_class="spot"),
        option=[(near, 4)],
        idempotency_key="spot",
        actor=dave,
        door="api",
    )
    assert [a.price_per_accelerator_hour for a in booked.allocations.all()] == [Decimal("8")]
    split = services.booking_create(
        spec=spec(count=8, allow_split=True, max_centers=2, hubs_excluded=("GZ",)),
        option=[(near, 4), (far, 4)],
        idempotency_key="split",
        actor=dave,
        door="api",
    )
    assert split.accelerators == 8


@pytest.mark.django_db
@pytest.mark.parametrize("stale", ["snapshot cheaper", "snapshot dearer"])
def test_the_spot_cap_is_checked_on_the_discount_charged_not_the_snapshots(
    stale: str, acme: Any, dave: Any, active_pool: Any, settings: Any
) -> None:
    """The snapshot's spot discount may be moments old; the booking is charged the one read
    now, and that is the one the cap is checked against."""
    before, now = (Decimal("30"), Decimal("10")) if stale == "snapshot cheaper" else (10, 30)
    pool = active_pool(acme, size=8, price="10.00", spot_discount_percent=before)
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60
    catalog.invalidate()
    try:
        assert catalog.current() is not None
        Pool.objects.filter(pk=pool.pk).update(spot_discount_percent=now)  # no refresh yet
        assert catalog.current().by_national_id[pool.national_id].spot_discount_percent == before
        book = lambda: services.booking_create(  # noqa: E731
            spec=spec(price_cap=Decimal("8"), booking_class="spot"),
            option=[(pool.national_id, 4)],
            idempotency_key="stale",
            actor=dave,
            door="api",
        )
        if stale == "snapshot cheaper":  # 7.00 by the snapshot, 9.00 charged: refused
            with pytest.raises(ValidationError) as exc:
                book()
            assert "spot price 9.0000" in exc.value.message_dict["option"][0]
            nothing_written()
        else:  # 9.00 by the snapshot, 7.00 charged: booked at 7
            booked = book()
            assert [a.price_per_accelerator_hour for a in booked.allocations.all()] == [
                Decimal("7")
            ]
    finally:
        catalog.invalidate()


# --- gRPC and the CLI (a real broker on loopback) ------------------------------------------


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def _grpc_spec(attack: Attack) -> Any:
    fields: dict[str, Any] = {"count": 4}
    for key, value in attack.fields.items():
        if isinstance(value, Decimal):
            fields[key] = str(value)
        elif isinstance(value, tuple):
            fields[key] = list(value)
        else:
            fields[key] = value
    return workload_spec(accelerator_model="nvidia-a100-80g", earliest_start=next_hour(), **fields)


@pytest.mark.django_db(transaction=True)
def test_grpc_book_refuses_every_attack_with_invalid_argument(
    broker: BrokerRuntime, scene: Scene, dave: Any
) -> None:
    _, token = registry_services.token_create(user=dave, name="grpc")
    client = BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=10)
    try:
        for attack in attacks(scene):
            with pytest.raises(grpc.RpcError) as bad:
                client.book(_grpc_spec(attack), idempotency_key="attack", option=attack.option)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, attack.name
            status = rpc_status.from_call(bad.value)
            assert status is not None
            detail = error_details_pb2.BadRequest()
            status.details[0].Unpack(detail)
            assert [(v.field, v.description) for v in detail.field_violations] == [
                ("option", m) for m in attack.messages
            ], attack.name
        nothing_written()
    finally:
        client.close()


def _cli(broker: BrokerRuntime, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(broker.port, token, *args)


@pytest.mark.django_db(transaction=True)
def test_the_cli_refuses_every_attack_it_can_send_with_the_same_message(
    broker: BrokerRuntime, scene: Scene, dave: Any
) -> None:
    _, token = registry_services.token_create(user=dave, name="cli")
    start = next_hour().isoformat()
    for attack in attacks(scene):
        if not attack.cli_ok:
            continue
        count = str(attack.fields.get("count", 4))
        options = [f"--option={p}={n}" for p, n in attack.option]
        done = _cli(
            broker,
            token,
            "book",
            "--model",
            "nvidia-a100-80g",
            "--count",
            count,
            "--start",
            start,
            "--key",
            "attack",
            *attack.cli,
            *options,
        )
        assert done.returncode == 1, (attack.name, done.stdout, done.stderr)
        for message in attack.messages:
            assert f"  option: {message} [--option]" in done.stderr, (attack.name, done.stderr)
    nothing_written()
