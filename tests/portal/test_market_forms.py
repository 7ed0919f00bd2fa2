"""The market's portal forms through the real views, CSRF checked as in a browser: a firm
offers its booking, another firm buys it, the seller withdraws another; bad input lands on its
field with the input kept; another firm's booking or offer id is "not found" and changes
nothing; an offer past its booking's start is no longer on the market."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from brokers import ledger, market
from brokers.choices import BookingStatus, EventKind, OfferStatus
from brokers.models import Booking, BookingEvent, ResaleOffer
from registry.choices import Status
from tests.factories import OrganizationFactory, UserFactory
from tests.portal.conftest import book

pytestmark = pytest.mark.django_db


class Browser:
    """A signed-in client that enforces CSRF and posts with the token of the page it read."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, url: str) -> Any:
        return self.client.get(url)

    def post(self, page: str, url: str, data: dict[str, Any] | None = None) -> Any:
        html = self.client.get(page).content.decode()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert match, f"no form on {page}"
        return self.client.post(url, {**(data or {}), "csrfmiddlewaretoken": match.group(1)})


@pytest.fixture
def browser(client_as: Any) -> Any:
    return lambda user: Browser(client_as(user, enforce_csrf_checks=True))


@pytest.fixture
def erin(db: Any) -> Any:
    """Another AI firm: sees open offers (never the seller's booking) and may buy them."""
    return UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))


@pytest.fixture
def pool(acme: Any, make_pool: Any) -> Any:
    return make_pool(acme, Status.ACTIVE)


def _field_errors(html: str, field: str) -> str:
    match = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', html, re.S)
    return match.group(1) if match else ""


def _state() -> tuple[Any, ...]:
    return (
        list(Booking.objects.order_by("pk").values_list("pk", "status", "window_end")),
        list(ResaleOffer.objects.order_by("pk").values_list("pk", "status", "buyer_id")),
        BookingEvent.objects.count(),
    )


def test_a_firm_offers_its_booking_and_another_firm_buys_it(
    dave: Any, erin: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 8, key="sell")
    page = f"/bookings/{booking.national_id}/"
    seller = browser(dave)
    assert 'id="offer-form"' in seller.get(page).content.decode()
    response = seller.post(page, f"{page}offer/", {"price": "120.00", "start": ""})
    assert response.status_code == 302 and response["Location"] == page
    offer = ResaleOffer.objects.get(booking=booking)
    assert (offer.status, offer.price, offer.start) == (
        "open",
        Decimal("120.00"),
        booking.window_start,
    )
    event = BookingEvent.objects.get(booking=booking, kind=EventKind.OFFERED)
    assert event.data["door"] == "portal"
    assert offer.national_id in seller.get(page).content.decode()

    buyer = browser(erin)
    listed = buyer.get("/offers/").content.decode()
    assert f'data-offer="{offer.national_id}"' in listed and 'class="buy-offer"' in listed
    assert booking.national_id not in listed  # never the seller's booking
    response = buyer.post("/offers/", f"/offers/{offer.national_id}/buy/")
    offer.refresh_from_db()
    assert offer.status == OfferStatus.SOLD and offer.bought is not None
    assert response.status_code == 302
    assert response["Location"] == f"/bookings/{offer.bought.national_id}/"
    assert offer.bought.organization.memberships.filter(user=erin).exists()
    assert Booking.objects.get(pk=booking.pk).status == BookingStatus.SOLD
    assert ledger.oversold_pools() == {}
    # The seller's list shows it sold, the buyer's its new booking.
    assert "sold" in seller.get("/offers/").content.decode()
    assert offer.bought.national_id in buyer.get("/offers/").content.decode()


def test_the_seller_withdraws_an_offer_and_it_leaves_the_market(
    dave: Any, erin: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 4, key="withdraw")
    offer = market.offer_create(booking=booking, actor=dave, door="api", price=Decimal("9"))
    response = browser(dave).post("/offers/", f"/offers/{offer.national_id}/withdraw/")
    assert response.status_code == 302 and response["Location"] == "/offers/"
    assert ResaleOffer.objects.get(pk=offer.pk).status == OfferStatus.WITHDRAWN
    assert BookingEvent.objects.filter(booking=booking, kind=EventKind.WITHDRAWN).count() == 1
    assert offer.national_id not in browser(erin).get("/offers/").content.decode()


def _inside(booking: Booking, minutes: int) -> dt.datetime:
    """The slot boundary at or before ``minutes`` after the booking's start."""
    moment = booking.window_start + dt.timedelta(minutes=minutes)
    return ledger.slot_bounds(moment, moment)[0]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"price": "-1"}, "price", market.PRICE_MESSAGE),
        ({"price": "lots"}, "price", market.PRICE_MESSAGE),
        ({"price": "1e13"}, "price", market.PRICE_MESSAGE),
        ({"price": ""}, "price", "This field is required."),
        ({"price": "10", "start": "tomorrow-ish"}, "start", "Enter a valid date/time."),
        ({"price": "10", "start": "outside"}, "start", "Inside the booking&#x27;s window."),
        ({"price": "10", "start": "off-slot"}, "start", "Offer from a slot boundary"),
    ],
)
def test_bad_offer_input_shows_the_field_message_and_keeps_the_input(
    data: dict[str, str], field: str, message: str, dave: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 4, key="bad", hours=2.0)
    starts = {
        "outside": booking.window_end + dt.timedelta(hours=1),
        "off-slot": _inside(booking, 60) + dt.timedelta(minutes=7),
    }
    if data.get("start") in starts:
        data = {**data, "start": f"{starts[data['start']]:%Y-%m-%dT%H:%M}"}
    page = f"/bookings/{booking.national_id}/"
    before = _state()
    response = browser(dave).post(page, f"{page}offer/", data)
    assert response.status_code == 200
    html = response.content.decode()
    assert message in _field_errors(html, field), html
    if data["price"]:
        assert f'value="{data["price"]}"' in html  # what the user typed is still there
    assert _state() == before


def test_a_second_offer_of_one_booking_is_refused_on_the_form(
    dave: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 4, key="twice")
    market.offer_create(booking=booking, actor=dave, door="api", price=Decimal("9"))
    page = f"/bookings/{booking.national_id}/"
    before = _state()
    html = browser(dave).post(page, f"{page}offer/", {"price": "8"}).content.decode()
    assert "This booking is already offered." in html
    assert _state() == before


def test_another_firms_booking_and_offer_ids_are_not_found_and_change_nothing(
    dave: Any, erin: Any, alice: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 4, key="mine")
    offer = market.offer_create(booking=booking, actor=dave, door="api", price=Decimal("9"))
    withdrawn = market.offer_withdraw(
        offer=market.offer_create(
            booking=book(dave, pool, 4, key="gone"), actor=dave, door="api", price=Decimal("9")
        ),
        actor=dave,
        door="api",
    )
    before = _state()
    other, operator = browser(erin), browser(alice)
    # Another firm offers the seller's booking, or withdraws its offer: not found.
    assert (
        other.post(
            "/offers/", f"/bookings/{booking.national_id}/offer/", {"price": "1"}
        ).status_code
        == 404
    )
    assert other.post("/offers/", f"/offers/{offer.national_id}/withdraw/").status_code == 404
    # A withdrawn offer of another firm is not found to a buyer; the operator buys nothing.
    assert other.post("/offers/", f"/offers/{withdrawn.national_id}/buy/").status_code == 404
    assert operator.post("/", f"/offers/{offer.national_id}/buy/").status_code == 404
    assert (
        operator.post("/", f"/bookings/{booking.national_id}/offer/", {"price": "1"}).status_code
        == 404
    )
    assert _state() == before
    # The seller cannot buy its own offer: told so, nothing bought.
    seller = browser(dave)
    response = seller.post("/offers/", f"/offers/{offer.national_id}/buy/")
    assert response.status_code == 302 and response["Location"] == "/offers/"
    assert "A firm does not buy its own offer." in seller.get("/offers/").content.decode()
    assert _state() == before


def test_an_offer_past_its_start_is_off_the_market_before_the_sweep(
    dave: Any, erin: Any, pool: Any, browser: Any
) -> None:
    booking = book(dave, pool, 4, key="late")
    offer = market.offer_create(booking=booking, actor=dave, door="api", price=Decimal("9"))
    ResaleOffer.objects.filter(pk=offer.pk).update(
        expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )
    before = _state()
    buyer = browser(erin)
    assert offer.national_id not in buyer.get("/offers/").content.decode()
    assert buyer.post("/offers/", f"/offers/{offer.national_id}/buy/").status_code == 404
    assert _state() == before
    # The seller sees it expired, without a withdraw button.
    row = re.search(
        rf'<tr data-offer="{offer.national_id}">(.*?)</tr>',
        browser(dave).get("/offers/").content.decode(),
        re.S,
    )
    assert row and "<td>expired</td>" in row.group(1) and "Withdraw" not in row.group(1)
