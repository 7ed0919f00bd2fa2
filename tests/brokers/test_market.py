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
