"""The market at every door: a spot booking preempted by a priority booking (REST, gRPC, CLI),
resale offers seen, bought and withdrawn, and a block that changes hands exactly once under
concurrent buyers coming through gRPC and REST at the same time."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from rest_framework.test import APIClient

from brokers import ledger, market
from brokers.client.client import BrokerClient, workload_spec
from brokers.models import Booking, ResaleOffer
from brokers.rpc.server import BrokerRuntime, build_server
from protos import broker_pb2 as pb
from protos.errors import ERRORS
from registry import services as registry_services
from registry.models import Pool
from tests.brokers.broker_testing import run_cli
from tests.brokers.conftest import next_hour
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
A100 = "nvidia-a100-80g"


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def token_of(user: Any) -> str:
    return registry_services.token_create(user=user, name="market")[1]


def rest(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_of(user)}")
    return client


def cli(broker: BrokerRuntime, user: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(broker.port, token_of(user), *args)


def firm() -> Any:
    return UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))


@pytest.fixture
def pool(acme: Any, active_pool: Any) -> Pool:
    p = active_pool(acme, size=8, price="10.00")
    Pool.objects.filter(pk=p.pk).update(spot_discount_percent=Decimal("25"))
    return p


def test_spot_preempted_by_priority_at_every_door(
    broker: BrokerRuntime, pool: Pool, dave: Any, deepai: Any, pat: Any
) -> None:
    spotter = firm()
    start = next_hour().isoformat()
    # CLI: spot prices next to reserved ones; `book --spot`.
    capacity = cli(broker, spotter, "capacity", "--model", A100)
    assert capacity.returncode == 0, capacity.stderr
    assert "spot/h" in capacity.stdout and "7.5000" in capacity.stdout
    booked = cli(
        broker, spotter, "book", "--model", A100, "--count", "6", "--start", start, "--spot"
    )
    assert booked.returncode == 0, booked.stderr
    assert "class: spot" in booked.stdout and "est. 45.00" in booked.stdout
    spot_id = booked.stdout.split("booking ")[1].split(":")[0]

    # REST: platform staff grant the priority class; placement explains the preemption.
    assert (
        rest(pat)
        .put(f"/api/v1/priority-grants/{deepai.slug}/", {"accelerator_hours": 100}, format="json")
        .status_code
        == 200
    )
    body = {"accelerator_model": A100, "count": 4, "earliest_start": start}
    placed = rest(dave).post(
        "/api/v1/placements/", {**body, "booking_class": "priority"}, format="json"
    )
    assert placed.status_code == 200, placed.content
    option = placed.json()["options"][0]
    assert option["preemptions"] == [{"pool": pool.national_id, "bookings": 1, "accelerators": 6}]
    assert f"preempts 1 spot booking on {pool.national_id}" in option["explanation"]

    # gRPC: the priority booking preempts; the spot firm sees it everywhere.
    dave_grpc = BrokerClient(f"127.0.0.1:{broker.port}", token_of(dave))
    spot_grpc = BrokerClient(f"127.0.0.1:{broker.port}", token_of(spotter))
    try:
        spec = workload_spec(
            accelerator_model=A100, count=4, earliest_start=next_hour(), booking_class="priority"
        )
        assert dave_grpc.place(spec).options[0].preemptions[0].bookings == 1
        priority = dave_grpc.book(spec, idempotency_key="prio-1")
        assert priority.booking_class == "priority"
        gone = spot_grpc.booking(spot_id)
        assert gone.status == pb.BOOKING_STATUS_PREEMPTED and priority.booking_id in (
            gone.status_reason
        )
        kinds = [e.kind for e in spot_grpc.watch(spot_id, timeout=10)]
        assert kinds[-1] == "preempted"
        # The other firm's booking id is no business of the priority firm.
        with pytest.raises(grpc.RpcError) as exc:
            dave_grpc.booking(spot_id)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        dave_grpc.close()
        spot_grpc.close()
    got = rest(spotter).get(f"/api/v1/bookings/{spot_id}/").json()
    assert (got["status"], got["booking_class"]) == ("preempted", "spot")
    listed = cli(broker, spotter, "bookings")
    assert "preempted" in listed.stdout
    assert ledger.oversold_pools() == {} and ledger.oversold_pools(firm_only=True) == {}


def test_offer_and_buy_at_every_door(broker: BrokerRuntime, pool: Pool, dave: Any) -> None:
    buyer = firm()
    start = next_hour() + dt.timedelta(hours=2)
    seller = rest(dave)
    made = seller.post(
        "/api/v1/bookings/",
        {
            "idempotency_key": "sell-1",
            "spec": {"accelerator_model": A100, "count": 4, "earliest_start": start.isoformat()},
        },
        format="json",
    ).json()
    # CLI: offer it.
    offered = cli(broker, dave, "offer", made["national_id"], "--price", "30.00")
    assert offered.returncode == 0, offered.stderr
    offer_id = offered.stdout.split()[1].rstrip(":")
    assert offer_id.startswith("OF-") and "30.00" in offered.stdout
    # Bad input: the same field message at REST, gRPC and the CLI, nothing written.
    bad = seller.post(
        f"/api/v1/bookings/{made['national_id']}/offer/", {"price": "-1"}, format="json"
    )
    assert bad.status_code == 400 and bad.json() == {"price": [market.PRICE_MESSAGE]}
    cli_bad = cli(broker, dave, "offer", made["national_id"], "--price", "lots")
    assert cli_bad.returncode == 1 and f"price: {market.PRICE_MESSAGE}" in cli_bad.stderr
    assert ResaleOffer.objects.count() == 1

    # The buyer sees it in capacity queries and placement, without the seller's booking.
    cap = rest(buyer).get("/api/v1/capacity/", {"start": start.isoformat()}).json()
    assert [o["offer_id"] for o in cap["offers"]] == [offer_id]
    assert cap["offers"][0]["booking_id"] == "" and not cap["offers"][0]["mine"]
    placed = (
        rest(buyer)
        .post(
            "/api/v1/placements/",
            {"accelerator_model": A100, "count": 4, "earliest_start": start.isoformat()},
            format="json",
        )
        .json()
    )
    assert offer_id in [o["offer"] for o in placed["options"]]
    with BrokerClient(f"127.0.0.1:{broker.port}", token_of(buyer)) as client:
        listed = client.offers()
        assert [o.offer_id for o in listed.offers] == [offer_id]
        assert listed.offers[0].booking_id == ""
    # CLI: buy it.
    bought = cli(broker, buyer, "buy", offer_id, "--image", "img:1")
    assert bought.returncode == 0, bought.stderr
    assert "confirmed" in bought.stdout and "est. 30.00" in bought.stdout
    assert seller.get(f"/api/v1/bookings/{made['national_id']}/").json()["status"] == "sold"
    mine = seller.get(f"/api/v1/offers/{offer_id}/").json()
    assert (mine["status"], mine["booking_id"], mine["bought_booking_id"]) == (
        "sold",
        made["national_id"],
        "",
    )
    # Sold: no longer on the market for a third firm.
    again = cli(broker, firm(), "buy", offer_id)
    assert again.returncode == ERRORS["not_found"].exit and "NOT_FOUND" in again.stderr


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "sql"])
def test_query_capacity_lists_other_firms_open_offers_over_its_window_only(
    snapshot: bool,
    broker: BrokerRuntime,
    pool: Pool,
    acme: Any,
    active_pool: Any,
    dave: Any,
    settings: Any,
) -> None:
    """QueryCapacity asks the free-capacity statement whether any offer is open over the
    window, and the spot discounts, in the same round trip (issue 14), and reads the offers
    only then: the answers must be those of the full offers query, first page only, never the
    caller's own offer, nothing once withdrawn; spot prices as before."""
    from brokers import services
    from brokers.placement import catalog
    from registry.choices import Door
    from tests.brokers.conftest import spec

    other = active_pool(acme, size=8, price="10.00")  # a second pool: a second page
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
    catalog.invalidate()
    assert (catalog.current() is not None) is snapshot
    start = next_hour() + dt.timedelta(hours=2)
    booking = services.booking_create(
        spec=spec(count=4, earliest_start=start), idempotency_key="q-1", actor=dave, door=Door.API
    )
    offer = market.offer_create(booking=booking, actor=dave, door=Door.API, price=Decimal("30"))
    ts = pb.QueryCapacityRequest().start.__class__

    def at(when: dt.datetime) -> Any:
        t = ts()
        t.FromDatetime(when)
        return t

    def offers(user: Any, **filters: Any) -> list[str]:
        with BrokerClient(f"127.0.0.1:{broker.port}", token_of(user)) as client:
            reply = client.capacity(**filters)
            return [o.offer_id for o in reply.offers]

    buyer = firm()
    window = {"start": at(start), "accelerator_model": A100}
    assert offers(buyer, **window) == [offer.national_id]
    with BrokerClient(f"127.0.0.1:{broker.port}", token_of(buyer)) as client:
        spot = {
            e.pool: e.spot_price_per_accelerator_hour for e in client.capacity(**window).entries
        }
    assert spot == {pool.national_id: "7.5000", other.national_id: "10.0000"}
    # The window's edges: an hour ending at the offer's start, and one starting at its end.
    assert offers(buyer, start=at(start - dt.timedelta(hours=1)), end=at(start)) == []
    assert offers(buyer, start=at(start + dt.timedelta(hours=1))) == []
    assert offers(buyer, start=at(start - dt.timedelta(minutes=30))) == [offer.national_id]
    # No pool read (none under this price): the offers are still listed (no probe answer).
    assert offers(buyer, max_price="0.01", **window) == [offer.national_id]
    # Pages after the first list no offers; the seller never sees its own offer here.
    with BrokerClient(f"127.0.0.1:{broker.port}", token_of(buyer)) as client:
        first = client.capacity(page_size=1, **window)
        assert len(first.entries) == 1 and first.next_page_token
        second = client.capacity(page_size=1, page_token=first.next_page_token, **window)
        assert len(second.entries) == 1 and list(second.offers) == []
    assert offers(dave, **window) == []
    market.offer_withdraw(offer=offer, actor=dave, door=Door.API)
    assert offers(buyer, **window) == []


def test_concurrent_buyers_through_grpc_and_rest_one_wins(
    broker: BrokerRuntime, pool: Pool, dave: Any
) -> None:
    """Six firms buy one block at once, three through gRPC and three through REST: exactly
    one booking owns it afterwards, every other buyer is told it is gone."""
    start = next_hour() + dt.timedelta(hours=3)
    booking = rest(dave).post(
        "/api/v1/bookings/",
        {
            "idempotency_key": "race-1",
            "spec": {"accelerator_model": A100, "count": 8, "earliest_start": start.isoformat()},
        },
        format="json",
    )
    nid = booking.json()["national_id"]
    offer_id = rest(dave).post(f"/api/v1/bookings/{nid}/offer/", {"price": "80"}).json()["offer_id"]
    buyers = [firm() for _ in range(6)]
    grpc_clients = [BrokerClient(f"127.0.0.1:{broker.port}", token_of(u)) for u in buyers[:3]]
    rest_clients = [rest(u) for u in buyers[3:]]
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def via_grpc(client: BrokerClient) -> None:
        barrier.wait()
        try:
            client.buy(offer_id)
            outcomes.append("won")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)

    def via_rest(client: APIClient) -> None:
        from django.db import connections

        barrier.wait()
        try:
            response = client.post(f"/api/v1/offers/{offer_id}/buy/", {}, format="json")
            outcomes.append("won" if response.status_code == 201 else str(response.status_code))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=via_grpc, args=(c,)) for c in grpc_clients]
    threads += [threading.Thread(target=via_rest, args=(c,)) for c in rest_clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in grpc_clients:
        c.close()
    assert sorted(outcomes) == sorted(
        ["won"]
        + ["RESOURCE_EXHAUSTED"] * (outcomes.count("RESOURCE_EXHAUSTED"))
        + ["409"] * (outcomes.count("409"))
    )
    assert outcomes.count("won") == 1 and len(outcomes) == 6
    offer = ResaleOffer.objects.get(national_id=offer_id)
    assert offer.status == "sold" and offer.bought is not None
    owners = Booking.objects.filter(
        allocations__pool=pool, status__in=["confirmed"], window_start=start
    ).distinct()
    assert [b.pk for b in owners] == [offer.bought.pk]
    assert market.open_offers().count() == 0
    assert ledger.oversold_pools() == {}


def test_a_running_spot_workload_is_stopped_after_its_grace_and_billed_for_what_it_ran(
    pool: Pool, dave: Any, deepai: Any, pat: Any, settings: Any
) -> None:
    """A real (simulated) agent runs the spot workload; the priority booking preempts it; the
    broker asks the agent to stop it with the grace period; it runs on that long, stops, and
    its usage is what it ran, at the spot price."""
    from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
    from agent.server import build_server as build_agent
    from brokers import dispatch, services
    from brokers.choices import BookingStatus, EventKind
    from brokers.models import UsageRecord
    from brokers.placement import WorkloadSpec

    scale = 0.01  # an hour lasts 36 s on the agent, a 100 s grace 1 s
    settings.BROKER_PREEMPTION_GRACE_SECONDS = 100
    site = build_agent(
        "127.0.0.1:0",
        agent_config=AgentConfig(
            agent_id="sim-market",
            port=0,
            pools=(
                PoolConfig(
                    key="a100",
                    accelerator_model=A100,
                    accelerators_per_node=8,
                    nodes=1,
                    declared_tflops_per_accelerator=312.0,
                ),
            ),
            simulation=SimulationConfig(mode=SimulationMode.HONEST, time_scale=scale),
            workload_startup_seconds=0.0,
        ),
    )
    try:
        pool.center.agent_endpoint = f"127.0.0.1:{site.port}"
        pool.center.save(update_fields=["agent_endpoint"])
        spot = services.booking_create(
            spec=WorkloadSpec(accelerator_model=A100, count=8, booking_class="spot"),
            idempotency_key="run-spot",
            actor=firm(),
            door="api",
        )
        allocation = spot.allocations.select_related(
            "booking", "pool__center", "pool__accelerator"
        ).get()
        dispatch._start(allocation, WorkloadSpec.from_json(spot.spec))
        for to, was in (("dispatching", "confirmed"), ("running", "dispatching")):
            services.booking_record(
                booking=spot, kind=EventKind.STATUS, message=to, to=to, allowed_from={was}
            )
        market.priority_grant_set(organization=deepai, actor=pat, door="api", accelerator_hours=50)
        services.booking_create(
            spec=WorkloadSpec(accelerator_model=A100, count=4, booking_class="priority"),
            idempotency_key="prio-run",
            actor=dave,
            door="api",
        )
        spot.refresh_from_db()
        assert spot.status == BookingStatus.PREEMPTED
        assert dispatch.stop_preempted(spot.pk, budget=20)
        usage = UsageRecord.objects.get(allocation=allocation)
        ran = (usage.finished_at - usage.started_at).total_seconds()
        assert 1.0 <= ran < 36, ran  # past the grace, well short of the hour
        assert usage.cost == (usage.accelerator_hours * Decimal("7.5")).quantize(Decimal("0.01"))
        workload = site.workloads.get(dispatch.workload_id(allocation))
        assert workload.state == "stopped" and "grace" in workload.message
    finally:
        site.stop(grace=0).wait()


def test_an_offer_past_its_start_is_off_the_market_at_every_door_before_the_sweep(
    broker: BrokerRuntime, pool: Pool, dave: Any
) -> None:
    """The booking's start passed and the sweep has not run (the row still says ``open``):
    no door lists it or sells it; the seller sees it expired; the sweep then records it."""
    from brokers.choices import EventKind
    from brokers.models import BookingEvent

    buyer = firm()
    start = next_hour() + dt.timedelta(hours=4)
    made = rest(dave).post(
        "/api/v1/bookings/",
        {
            "idempotency_key": "late-1",
            "spec": {"accelerator_model": A100, "count": 4, "earliest_start": start.isoformat()},
        },
        format="json",
    )
    nid = made.json()["national_id"]
    offer_id = rest(dave).post(f"/api/v1/bookings/{nid}/offer/", {"price": "40"}).json()["offer_id"]
    ResaleOffer.objects.filter(national_id=offer_id).update(
        expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )

    # REST: not listed (offers, capacity, placement), not bought.
    client = rest(buyer)
    assert client.get("/api/v1/offers/").json()["results"] == []
    assert client.get("/api/v1/capacity/", {"start": start.isoformat()}).json()["offers"] == []
    placed = client.post(
        "/api/v1/placements/",
        {"accelerator_model": A100, "count": 4, "earliest_start": start.isoformat()},
        format="json",
    ).json()
    assert offer_id not in [o.get("offer") for o in placed["options"]]
    assert client.post(f"/api/v1/offers/{offer_id}/buy/", {}, format="json").status_code == 404
    # gRPC: not listed, not bought.
    with BrokerClient(f"127.0.0.1:{broker.port}", token_of(buyer)) as stub:
        assert list(stub.offers().offers) == []
        with pytest.raises(grpc.RpcError) as exc:
            stub.buy(offer_id)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # CLI: not listed, not bought (non-zero exit).
    assert offer_id not in cli(broker, buyer, "offers").stdout
    bought = cli(broker, buyer, "buy", offer_id)
    assert bought.returncode == ERRORS["not_found"].exit and "NOT_FOUND" in bought.stderr
    # Nothing changed; the seller sees it expired.
    assert ResaleOffer.objects.get(national_id=offer_id).status == "open"
    assert rest(dave).get(f"/api/v1/bookings/{nid}/").json()["status"] == "confirmed"
    assert rest(dave).get(f"/api/v1/offers/{offer_id}/").json()["status"] == "expired"

    # The sweep writes it down, once, with an event on the seller's booking.
    assert market.offers_expire() == 1 and market.offers_expire() == 0
    assert ResaleOffer.objects.get(national_id=offer_id).status == "expired"
    events = BookingEvent.objects.filter(booking__national_id=nid, kind=EventKind.EXPIRED)
    assert [offer_id in e.message for e in events] == [True]
