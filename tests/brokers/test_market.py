"""The market at the service level: spot prices, preemption (fewest and youngest, never more
than needed, in the firm booking's transaction), priority grants, resale (whole and part,
expiry), on real PostgreSQL. Concurrent buyers: ``test_market_doors``."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from brokers import ledger, market, services
from brokers.choices import BookingStatus, EventKind, OfferStatus
from brokers.errors import CapacityExhausted, QuotaExceeded
from brokers.models import Booking, BookingEvent, PoolSlot, ResaleOffer
from registry import selectors as registry_selectors
from registry.models import Pool, WebhookDelivery, WebhookSubscription
from tests.brokers.conftest import spec
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def book(actor: Any, pool: Pool, n: int, **kwargs: Any) -> Booking:
    return services.booking_create(
        spec=spec(count=n, **kwargs),
        idempotency_key=uuid.uuid4().hex,
        actor=actor,
        door="api",
        option=[(pool.national_id, n)],
    )


@pytest.fixture
def firm2(db: Any) -> Any:
    return UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))


@pytest.fixture
def pool(acme: Any, active_pool: Any) -> Pool:
    p = active_pool(acme, size=8, price="10.00")
    Pool.objects.filter(pk=p.pk).update(spot_discount_percent=Decimal("40"))
    p.refresh_from_db()
    return p


def slots(pool: Pool) -> set[tuple[int, int]]:
    return set(PoolSlot.objects.filter(pool=pool).values_list("reserved", "spot_reserved"))


def test_spot_is_priced_at_the_pool_discount_and_shown_next_to_reserved(
    dave: Any, pool: Pool
) -> None:
    rows, _ = services.capacity_query(actor=dave, accelerator_model="nvidia-a100-80g")
    row = next(r for r in rows if r.pool == pool.national_id)
    assert (row.price_per_accelerator_hour, row.spot_price_per_accelerator_hour) == (
        Decimal("10.0000"),
        Decimal("6.0000"),
    )
    booking = book(dave, pool, 4, booking_class="spot")
    assert booking.booking_class_id == "spot"
    assert booking.estimated_cost == Decimal("24.00")  # 4 x 1 h x 6.00
    assert booking.allocations.get().price_per_accelerator_hour == Decimal("6.0000")
    assert slots(pool) == {(4, 4)}
    preview = services.placement_preview(spec=spec(count=2, booking_class="spot"), actor=dave)
    assert preview.options[0].parts[0].price_per_accelerator_hour == Decimal("6.0000")
    assert "may be preempted" in preview.options[0].explanation[-1]


def test_a_reserved_booking_preempts_the_fewest_youngest_spot_bookings_only(
    dave: Any, firm2: Any, pool: Pool, settings: Any
) -> None:
    settings.BROKER_DISPATCH = False
    old4 = book(firm2, pool, 4, booking_class="spot")
    young2 = book(firm2, pool, 2, booking_class="spot")
    younger2 = book(firm2, pool, 2, booking_class="spot")
    assert slots(pool) == {(8, 8)}
    sub = WebhookSubscription.objects.create(
        organization=registry_selectors.organization_of(firm2), url="https://example.org/h"
    )

    # 2 needed: one booking suffices, and the youngest of those that do.
    preview = services.placement_preview(spec=spec(count=2), actor=dave)
    assert [(p.pool, p.bookings) for p in preview.options[0].preemptions] == [(pool.national_id, 1)]
    assert f"preempts 1 spot booking on {pool.national_id}" in preview.options[0].explanation
    firm = book(dave, pool, 2)
    assert Booking.objects.get(pk=younger2.pk).status == BookingStatus.PREEMPTED
    assert {b.status for b in Booking.objects.filter(pk__in=[old4.pk, young2.pk])} == {
        BookingStatus.CONFIRMED
    }
    assert slots(pool) == {(8, 6)}
    event = BookingEvent.objects.get(booking=younger2, kind=EventKind.PREEMPTED)
    assert firm.national_id in event.message and event.status == BookingStatus.PREEMPTED
    assert WebhookDelivery.objects.filter(subscription=sub, event="booking.preempted").count() == 1

    # 4 more needed: the old booking of 4 alone (one), not the young 2 plus another (two).
    preview = services.placement_preview(spec=spec(count=4), actor=dave)
    assert "preempts 1 spot booking" in preview.options[0].explanation[-1]
    book(dave, pool, 4)
    assert Booking.objects.get(pk=old4.pk).status == BookingStatus.PREEMPTED
    assert Booking.objects.get(pk=young2.pk).status == BookingStatus.CONFIRMED
    assert slots(pool) == {(8, 2)}
    assert ledger.oversold_pools() == {} and ledger.oversold_pools(firm_only=True) == {}

    # Firm bookings never exceed capacity: 6 firm + 2 spot; 3 more firm cannot fit.
    with pytest.raises(CapacityExhausted, match="even preempting"):
        book(dave, pool, 3)
    assert slots(pool) == {(8, 2)}
    # Spot never preempts spot.
    with pytest.raises(CapacityExhausted):
        book(dave, pool, 1, booking_class="spot")


def test_preemption_is_all_or_nothing_with_the_firm_booking(
    dave: Any, firm2: Any, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spot = book(firm2, pool, 6, booking_class="spot")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise QuotaExceeded("refused after preempting", code="quota.test")

    # The quota check runs in the same transaction: refusing there must undo the preemption.
    original = services._dispatch_on_commit
    monkeypatch.setattr(services, "_dispatch_on_commit", refuse)
    with pytest.raises(QuotaExceeded):
        book(dave, pool, 4)
    monkeypatch.setattr(services, "_dispatch_on_commit", original)
    assert Booking.objects.get(pk=spot.pk).status == BookingStatus.CONFIRMED
    assert slots(pool) == {(6, 6)}


def test_priority_needs_a_grant_and_stays_within_it(
    dave: Any, pat: Any, firm2: Any, pool: Pool, deepai: Any
) -> None:
    with pytest.raises(PermissionDenied, match="priority.not_granted"):
        book(dave, pool, 2, booking_class="priority")
    with pytest.raises(PermissionDenied):
        market.priority_grant_set(organization=deepai, actor=dave, door="api", accelerator_hours=9)
    market.priority_grant_set(organization=deepai, actor=pat, door="api", accelerator_hours=6)
    spot = book(firm2, pool, 8, booking_class="spot")
    booking = book(dave, pool, 4, booking_class="priority")
    assert booking.booking_class_id == "priority"
    assert Booking.objects.get(pk=spot.pk).status == BookingStatus.PREEMPTED
    with pytest.raises(QuotaExceeded, match="Priority grant"):
        book(dave, pool, 4, booking_class="priority")
    with pytest.raises(ValidationError, match="Only spot bookings"):
        book(dave, pool, 1, replace_on_preemption=True)


def test_a_preempted_spot_booking_that_asked_is_re_placed(
    dave: Any, firm2: Any, pool: Pool, acme: Any, active_pool: Any
) -> None:
    spot = book(firm2, pool, 4, booking_class="spot", replace_on_preemption=True)
    book(dave, pool, 8)
    spot.refresh_from_db()
    assert spot.status == BookingStatus.PREEMPTED
    assert market.replace_preempted(booking=spot) is None  # nowhere else yet
    other = active_pool(acme, size=8, price="12.00")
    new = market.replace_preempted(booking=spot)
    assert new is not None and new.booking_class_id == "spot"
    assert new.allocations.get().pool_id == other.pk
    assert market.replace_preempted(booking=Booking.objects.get(pk=spot.pk)) == new  # once


def test_resale_of_a_whole_booking_and_of_its_later_part(dave: Any, firm2: Any, pool: Pool) -> None:
    sold = book(dave, pool, 4, duration=dt.timedelta(hours=2))
    offer = market.offer_create(booking=sold, actor=dave, door="api", price=Decimal("50"))
    assert offer.expires_at == sold.window_start
    with pytest.raises(ValidationError, match="already offered"):
        market.offer_create(booking=sold, actor=dave, door="api", price=Decimal("40"))
    with pytest.raises(ValidationError, match="own offer"):
        market.offer_buy(offer=offer, actor=dave, door="api")
    assert market.offer_options(spec(count=4), organization_id=None)[0].offer == offer.national_id
    before = slots(pool)
    bought = market.offer_buy(offer=offer, actor=firm2, door="api", image="img")
    assert slots(pool) == before  # the allocation moved; the counters did not
    sold.refresh_from_db()
    assert sold.status == BookingStatus.SOLD
    assert (bought.status, bought.estimated_cost, bought.window_start) == (
        BookingStatus.CONFIRMED,
        Decimal("50.00"),
        sold.window_start,
    )
    assert ResaleOffer.objects.get(pk=offer.pk).status == OfferStatus.SOLD
    assert BookingEvent.objects.filter(booking=sold, kind=EventKind.SOLD).exists()
    with pytest.raises(CapacityExhausted, match="sold"):
        market.offer_buy(
            offer=offer,
            actor=UserFactory(membership__organization=OrganizationFactory(kind="ai_firm")),
            door="api",
        )
    assert ledger.oversold_pools() == {}

    # The later hour of another booking: the seller keeps the first, the buyer gets the second.
    kept = book(dave, pool, 4, duration=dt.timedelta(hours=2))
    later = kept.window_start + dt.timedelta(hours=1)
    with pytest.raises(ValidationError, match="slot boundary"):
        market.offer_create(
            booking=kept,
            actor=dave,
            door="api",
            price=Decimal("9"),
            start=later + dt.timedelta(minutes=7),
        )
    part = market.offer_create(
        booking=kept, actor=dave, door="api", price=Decimal("9"), start=later
    )
    got = market.offer_buy(offer=part, actor=firm2, door="api")
    kept.refresh_from_db()
    assert (kept.status, kept.window_end) == (BookingStatus.CONFIRMED, later)
    assert kept.spec["duration"] == 3600.0  # its workload stops where the sold part begins
    assert (got.window_start, got.window_end) == (later, later + dt.timedelta(hours=1))
    assert ledger.oversold_pools() == {}
    services.booking_cancel(booking=kept, actor=dave, door="api")
    services.booking_cancel(booking=got, actor=firm2, door="api")
    services.booking_cancel(booking=bought, actor=firm2, door="api")
    assert slots(pool) <= {(0, 0)}


def test_a_cancelled_or_replaced_booking_takes_its_open_offer_back_with_an_event(
    dave: Any, pool: Pool, acme: Any, active_pool: Any
) -> None:
    sub = WebhookSubscription.objects.create(
        organization=registry_selectors.organization_of(dave), url="https://example.org/h"
    )
    cancelled = book(dave, pool, 2)
    offer = market.offer_create(booking=cancelled, actor=dave, door="api", price=Decimal("3"))
    services.booking_cancel(booking=cancelled, actor=dave, door="api", reason="plans changed")
    assert ResaleOffer.objects.get(pk=offer.pk).status == OfferStatus.WITHDRAWN
    withdrawn = BookingEvent.objects.get(booking=cancelled, kind=EventKind.WITHDRAWN)
    assert offer.national_id in withdrawn.message and "cancelled" in withdrawn.message
    # One cancellation webhook, and it tells the cancellation, not the withdrawal.
    hooks = WebhookDelivery.objects.filter(subscription=sub, event="booking.cancelled")
    assert [h.payload["data"]["message"] for h in hooks] == ["plans changed"]

    moved = book(dave, pool, 2)
    other = market.offer_create(booking=moved, actor=dave, door="api", price=Decimal("3"))
    active_pool(acme, size=8, price="10.00")
    new = services.booking_replace(
        booking=moved, exclude_center=pool.center.national_id, reason="center offline"
    )
    assert new is not None and Booking.objects.get(pk=moved.pk).status == BookingStatus.REPLACED
    assert ResaleOffer.objects.get(pk=other.pk).status == OfferStatus.WITHDRAWN
    assert BookingEvent.objects.filter(booking=moved, kind=EventKind.WITHDRAWN).count() == 1


PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def test_an_offer_past_its_start_is_neither_listed_nor_sold_before_the_sweep(
    dave: Any, firm2: Any, pool: Pool
) -> None:
    """The booking's start passed, the sweep has not run: the offer is still ``open`` in its
    row, yet no read lists it and a purchase is refused with the expiry, which is recorded."""
    sold = book(dave, pool, 4)
    offer = market.offer_create(booking=sold, actor=dave, door="api", price=Decimal("5"))
    ResaleOffer.objects.filter(pk=offer.pk).update(expires_at=PAST)
    offer.refresh_from_db()
    assert offer.status == OfferStatus.OPEN
    window = {"start": sold.window_start, "end": sold.window_end}
    assert not market.offers_visible_to(firm2).filter(pk=offer.pk).exists()
    assert market.offers_in_window(firm2, **window) == []
    assert market.offer_options(spec(count=4), organization_id=None) == []
    assert market.offer_view(offer, dave)["status"] == OfferStatus.EXPIRED  # the seller's view

    with pytest.raises(CapacityExhausted, match=r"has expired: offers lapse at the booking's "):
        market.offer_buy(offer=offer, actor=firm2, door="api")
    assert Booking.objects.get(pk=sold.pk).status == BookingStatus.CONFIRMED
    assert not Booking.objects.filter(organization__memberships__user=firm2).exists()
    assert ResaleOffer.objects.get(pk=offer.pk).status == OfferStatus.EXPIRED
    event = BookingEvent.objects.get(booking=sold, kind=EventKind.EXPIRED)
    assert offer.national_id in event.message
    # Refused again, now by its status; still one event. The seller cannot withdraw it either.
    with pytest.raises(CapacityExhausted, match="is expired"):
        market.offer_buy(offer=ResaleOffer.objects.get(pk=offer.pk), actor=firm2, door="api")
    with pytest.raises(ValidationError, match="The offer is expired"):
        market.offer_withdraw(offer=offer, actor=dave, door="api")
    assert BookingEvent.objects.filter(booking=sold, kind=EventKind.EXPIRED).count() == 1


def test_an_offer_whose_start_passes_while_it_is_bought_is_refused_under_the_lock(
    dave: Any, firm2: Any, pool: Pool
) -> None:
    """The buyer read the offer before the start (its copy says open and not due); the start
    passes before the purchase locks the row: refused there, nothing bought, recorded expired."""
    sold = book(dave, pool, 4)
    offer = market.offer_create(booking=sold, actor=dave, door="api", price=Decimal("5"))
    ResaleOffer.objects.filter(pk=offer.pk).update(expires_at=PAST)
    with pytest.raises(CapacityExhausted, match="has expired"):
        market.offer_buy(offer=offer, actor=firm2, door="api")  # ``offer`` read before
    assert Booking.objects.get(pk=sold.pk).status == BookingStatus.CONFIRMED
    assert ResaleOffer.objects.get(pk=offer.pk).status == OfferStatus.EXPIRED
    assert BookingEvent.objects.filter(booking=sold, kind=EventKind.EXPIRED).count() == 1


def test_the_expiry_sweep_expires_each_offer_once_with_an_event_and_is_scheduled(
    dave: Any, firm2: Any, pool: Pool
) -> None:
    from django.core.management import call_command
    from django_celery_beat.models import PeriodicTask

    from brokers import tasks
    from interconnect.celery import app

    due = [book(dave, pool, 2) for _ in range(2)]
    later = book(dave, pool, 2)
    offers = [
        market.offer_create(booking=b, actor=dave, door="api", price=Decimal("3"))
        for b in [*due, later]
    ]
    ResaleOffer.objects.filter(pk__in=[o.pk for o in offers[:2]]).update(expires_at=PAST)
    assert tasks.offers_expire() == 2  # the task the beat sends
    assert tasks.offers_expire() == 0  # safe to run twice
    statuses = dict(ResaleOffer.objects.values_list("pk", "status"))
    assert [statuses[o.pk] for o in offers] == ["expired", "expired", "open"]
    assert [
        BookingEvent.objects.filter(booking=b, kind=EventKind.EXPIRED).count()
        for b in [*due, later]
    ] == [1, 1, 0]
    # The open one still sells.
    assert market.offer_buy(offer=offers[2], actor=firm2, door="api").status == "confirmed"

    call_command("setup_schedules", verbosity=0)
    call_command("setup_schedules", verbosity=0)
    sweep = PeriodicTask.objects.get(task="brokers.tasks.offers_expire")
    assert sweep.enabled and sweep.interval.every == 60
    app.loader.import_default_modules()
    assert "brokers.tasks.offers_expire" in app.tasks


def _cap_pools(acme: Any, active_pool: Any) -> tuple[Pool, Pool]:
    """``cheap``: 7.00 with no spot discount (spot 7.00); ``deep``: 10.00 less 40 % (spot 6.00).
    By the pool's price ``cheap`` comes first, so a walk that stops at the first pool over a cap
    of 6.50 never reaches ``deep``."""
    cheap = active_pool(acme, size=8, price="7.00")
    deep = active_pool(acme, size=8, price="10.00")
    Pool.objects.filter(pk=deep.pk).update(spot_discount_percent=Decimal("40"))
    return cheap, deep


@pytest.mark.parametrize("snapshot", [False, True], ids=["sql", "snapshot"])
def test_a_spot_cap_is_compared_with_the_spot_price_and_a_reserved_one_with_the_price(
    dave: Any, acme: Any, active_pool: Any, settings: Any, snapshot: bool
) -> None:
    from brokers.placement import catalog

    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
    catalog.invalidate()
    cheap, deep = _cap_pools(acme, active_pool)
    cap = Decimal("6.50")
    try:
        spot = services.placement_preview(
            spec=spec(count=4, booking_class="spot", price_cap=cap), actor=dave
        )
        assert [[p.pool for p in o.parts] for o in spot.options] == [[deep.national_id]]
        assert spot.options[0].parts[0].price_per_accelerator_hour == Decimal("6.0000")
        assert spot.options[0].cost == Decimal("24.00")
        # A limit of one candidate: the search pages on until it reaches ``deep``.
        settings.BROKER_CANDIDATE_LIMIT = 1
        paged = services.placement_preview(
            spec=spec(count=4, booking_class="spot", price_cap=cap), actor=dave
        )
        assert [[p.pool for p in o.parts] for o in paged.options] == [[deep.national_id]]
        del settings.BROKER_CANDIDATE_LIMIT
        # Reserved (and priority) pay the pool's price: nothing within 6.50.
        reserved = services.placement_preview(spec=spec(count=4, price_cap=cap), actor=dave)
        assert reserved.options == []
        assert reserved.prefiltered.get("price.over_cap") == 2
        # Booking from the specification (no chosen option) places the same way.
        booked = services.booking_create(
            spec=spec(count=4, booking_class="spot", price_cap=cap),
            idempotency_key=uuid.uuid4().hex,
            actor=dave,
            door="api",
        )
        allocation = booked.allocations.get()
        assert (allocation.pool_id, allocation.price_per_accelerator_hour) == (
            deep.pk,
            Decimal("6.0000"),
        )
        with pytest.raises(CapacityExhausted):
            services.booking_create(
                spec=spec(count=4, price_cap=cap),
                idempotency_key=uuid.uuid4().hex,
                actor=dave,
                door="api",
            )
    finally:
        catalog.invalidate()


@pytest.mark.parametrize("snapshot", [False, True], ids=["sql", "snapshot"])
@pytest.mark.parametrize(
    ("price", "discount", "cap", "fits"),
    [
        # 10.0001 less 50 % = 5.00005: half to even gives 5.0000.
        ("10.0001", "50", "5.0000", True),
        # 10.0003 less 50 % = 5.00015: half to even gives 5.0002.
        ("10.0003", "50", "5.0001", False),
        ("10.0003", "50", "5.0002", True),
        # A cap finer than prices: 5.00019 admits 5.0001 only.
        ("10.0003", "50", "5.00019", False),
        ("10.0001", "50", "4.99999", False),
        ("10.0000", "100", "0", True),
    ],
)
def test_the_spot_cap_rounds_the_spot_price_as_spot_price_does_on_both_paths(
    dave: Any,
    acme: Any,
    active_pool: Any,
    settings: Any,
    snapshot: bool,
    price: str,
    discount: str,
    cap: str,
    fits: bool,
) -> None:
    from brokers.placement import catalog

    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
    catalog.invalidate()
    p = active_pool(acme, size=8, price=price)
    Pool.objects.filter(pk=p.pk).update(spot_discount_percent=Decimal(discount))
    assert (market.spot_price(Decimal(price), Decimal(discount)) <= Decimal(cap)) is fits
    try:
        result = services.placement_preview(
            spec=spec(count=4, booking_class="spot", price_cap=Decimal(cap)), actor=dave
        )
    finally:
        catalog.invalidate()
    assert bool(result.options) is fits
    assert result.prefiltered.get("price.over_cap", 0) == (0 if fits else 1)


def test_the_over_cap_reason_names_the_price_compared() -> None:
    from brokers.placement.filters import Context, price_within_cap
    from brokers.placement.network import Network
    from tests.brokers.test_placement import candidate

    cand = candidate(price=Decimal("10.0000"), spot_discount_percent=Decimal("30"))
    ctx = Context(network=Network({}))
    spot = price_within_cap(spec(booking_class="spot", price_cap=Decimal("6.50")), cand, ctx)
    assert spot is not None and spot.reason_code == "price.over_cap"
    assert "spot price 7.0000" in spot.detail and "over the cap 6.50" in spot.detail
    assert price_within_cap(spec(booking_class="spot", price_cap=Decimal("7")), cand, ctx) is None
    firm = price_within_cap(spec(price_cap=Decimal("7")), cand, ctx)
    assert firm is not None and firm.detail.startswith("10.0000 ")


def test_a_spot_cap_finds_the_pool_through_rest(dave: Any, acme: Any, active_pool: Any) -> None:
    from rest_framework.test import APIClient

    from registry import services as registry_services

    _, deep = _cap_pools(acme, active_pool)
    client = APIClient()
    token = registry_services.token_create(user=dave, name="cap")[1]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    body = {
        "accelerator_model": "nvidia-a100-80g",
        "count": 4,
        "earliest_start": spec().start.isoformat(),
        "price_cap": "6.50",
    }
    spot = client.post("/api/v1/placements/", {**body, "booking_class": "spot"}, format="json")
    assert spot.status_code == 200, spot.content
    parts = spot.json()["options"][0]["parts"]
    assert [(p["pool"], p["price_per_accelerator_hour"]) for p in parts] == [
        (deep.national_id, "6.0000")
    ]
    reserved = client.post("/api/v1/placements/", body, format="json")
    assert reserved.status_code == 200 and reserved.json()["options"] == [], reserved.content
