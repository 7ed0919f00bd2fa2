"""Open resale offers are the market's, the rest of them is not: another firm sees an open offer
without the seller's booking and may buy it, but never withdraws it, never offers the seller's
booking, never sees what the buyer got; an operator and an anonymous caller see no offers; a
firm does not buy its own offer (the same refusal at REST and gRPC). Withdrawn, sold and expired
offers of others are "not found" (the tenant matrix checks every door for those)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from rest_framework.test import APIClient

from brokers import market, services
from brokers.client.client import BrokerClient
from brokers.models import Booking, ResaleOffer
from brokers.rpc.server import BrokerRuntime, build_server
from registry import services as registry_services
from tests.brokers.conftest import spec
from tests.factories import CenterFactory, OrganizationFactory, PoolFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def token(user: Any) -> str:
    return registry_services.token_create(user=user, name="market-s")[1]


def rest(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token(user)}")
    return client


def test_offers_across_tenants(broker: BrokerRuntime, dave: Any, alice: Any, acme: Any) -> None:
    pool = PoolFactory(
        center=CenterFactory(operator=acme, status="active"),
        nodes=1,
        accelerators_per_node=8,
        price_per_accelerator_hour="10.00",
        status="active",
    )
    start = spec().start + dt.timedelta(hours=2)
    booking = services.booking_create(
        spec=spec(count=4, earliest_start=start),
        idempotency_key="tenancy-offer",
        actor=dave,
        door="api",
        option=[(pool.national_id, 4)],
    )
    offer = market.offer_create(booking=booking, actor=dave, door="api", price=Decimal("20"))
    erin = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    nid, oid = booking.national_id, offer.national_id

    # Another firm: sees the open offer, never the seller's booking; cannot act for the seller.
    listed = rest(erin).get("/api/v1/offers/").json()["results"]
    assert [(o["offer_id"], o["booking_id"], o["mine"]) for o in listed] == [(oid, "", False)]
    assert nid not in rest(erin).get(f"/api/v1/offers/{oid}/").content.decode()
    assert rest(erin).post(f"/api/v1/offers/{oid}/withdraw/").status_code == 404
    assert (
        rest(erin).post(f"/api/v1/bookings/{nid}/offer/", {"price": "1"}).status_code
        == rest(erin).post("/api/v1/bookings/BK-NONE/offer/", {"price": "1"}).status_code
        == 404
    )
    with BrokerClient(f"127.0.0.1:{broker.port}", token(erin)) as client:
        for call in (lambda: client.withdraw(oid), lambda: client.offer(nid, price="1")):
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert [o.booking_id for o in client.offers().offers] == [""]

    # The operator hosting the pool and an anonymous caller see no offers, buy none.
    assert rest(alice).get("/api/v1/offers/").json()["results"] == []
    assert rest(alice).post(f"/api/v1/offers/{oid}/buy/").status_code == 404
    assert rest(None).get("/api/v1/offers/").status_code == 401

    # The seller cannot buy its own offer: the same refusal at both doors, nothing written.
    own = rest(dave).post(f"/api/v1/offers/{oid}/buy/")
    assert own.status_code == 400 and own.json() == {
        "offer": ["A firm does not buy its own offer."]
    }
    with BrokerClient(f"127.0.0.1:{broker.port}", token(dave)) as client:
        with pytest.raises(grpc.RpcError) as exc:
            client.buy(oid)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "A firm does not buy its own offer." in exc.value.details()
    assert ResaleOffer.objects.get(pk=offer.pk).status == "open"

    # Erin buys; the seller sees it sold but not erin's booking, and erin's booking is hers.
    bought = rest(erin).post(f"/api/v1/offers/{oid}/buy/", {"image": "x"}, format="json")
    assert bought.status_code == 201
    new_id = bought.json()["national_id"]
    seller_view = rest(dave).get(f"/api/v1/offers/{oid}/").json()
    assert (seller_view["status"], seller_view["bought_booking_id"]) == ("sold", "")
    assert rest(dave).get(f"/api/v1/bookings/{new_id}/").status_code == 404
    assert rest(erin).get(f"/api/v1/offers/{oid}/").json()["bought_booking_id"] == new_id
    assert rest(erin).get(f"/api/v1/bookings/{nid}/").status_code == 404
    # A third firm no longer finds it.
    third = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    assert rest(third).get(f"/api/v1/offers/{oid}/").status_code == 404
    assert Booking.objects.get(national_id=new_id).organization_id != booking.organization_id
