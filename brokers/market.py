"""The market: booking classes (reserved, spot, priority), preemption of spot bookings, and the
resale of booked time between firms.

Ledger rules (see :mod:`brokers.ledger`): a spot booking counts in a slot's ``reserved`` and in
its ``spot_reserved``; a reserved or priority booking that does not fit takes room back from
spot bookings in its own transaction (:func:`reserve_preempting`): the fewest and, among as
few, the youngest spot bookings, never more than the slots need. A resale moves allocations from
one booking to another without touching the slot counters (the same accelerators stay reserved
over the same slots), under a lock on the offer, so one buyer at most gets it.

Every door calls the functions here (through :mod:`brokers.services` for bookings).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from brokers import ledger
from brokers.choices import (
    RESERVING_STATUSES,
    BookingClassSlug,
    BookingStatus,
    EventKind,
    OfferStatus,
)
from brokers.errors import CapacityExhausted, QuotaExceeded
from brokers.ledger import Part
from brokers.models import Allocation, Booking, BookingClass, PriorityGrant, ResaleOffer
from brokers.placement.spec import PlacementOption, Preemption, WorkloadSpec, spot_price
from interconnect.tasking import enqueue_on_commit
from registry import selectors as registry_selectors
from registry.actors import Actor, signed_in
from registry.choices import Door
from registry.models import Organization, Pool
from registry.webhooks import webhook_emit

logger = logging.getLogger(__name__)
# Seconds a preempted workload may run on to save its state before the agent stops it.
DEFAULT_PREEMPTION_GRACE_SECONDS = 30.0
_CLASS_CACHE_SECONDS = 30.0
# Sent by name (interconnect.tasking): this module never imports the task modules.
STOP_PREEMPTED_TASK = "brokers.tasks.booking_stop_preempted"
REPLACE_PREEMPTED_TASK = "brokers.tasks.booking_replace_preempted"
HOLDS_MOVED_TASK = "brokers.tasks.booking_holds_moved"
_classes: dict[str, BookingClass] = {}
_classes_at = 0.0


def _now() -> dt.datetime:
    from brokers import services

    return services._now()


def preemption_grace_seconds() -> float:
    return float(
        getattr(settings, "BROKER_PREEMPTION_GRACE_SECONDS", DEFAULT_PREEMPTION_GRACE_SECONDS)
    )


# --- Classes -----------------------------------------------------------------------------------


def booking_class(slug: str) -> BookingClass:
    """The class row of ``slug`` (cached a few seconds per process: the rows rarely change)."""
    global _classes_at
    if time.monotonic() - _classes_at > _CLASS_CACHE_SECONDS or slug not in _classes:
        _classes.clear()
        _classes.update({c.slug: c for c in BookingClass.objects.all()})
        _classes_at = time.monotonic()
    try:
        return _classes[slug]
    except KeyError:
        raise ValidationError(
            {"booking_class": [f"One of {', '.join(BookingClassSlug.values)}."]}
        ) from None


# The classes (migration 0007 makes the same rows): slug, name, description, preemptible,
# preempts, needs_grant.
CLASSES = (
    (
        "reserved",
        "Reserved",
        "Firm capacity at the pool's price; never preempted.",
        False,
        True,
        False,
    ),
    (
        "spot",
        "Spot",
        "Cheaper by the pool's spot discount; preempted when a firm booking needs the room.",
        True,
        False,
        False,
    ),
    (
        "priority",
        "Priority",
        "Granted by platform staff (a quota of accelerator-hours); preempts spot bookings.",
        False,
        True,
        True,
    ),
)


def ensure_classes() -> None:
    """Make the class rows if they are missing (a flushed test database)."""
    for slug, name, description, preemptible, preempts, needs_grant in CLASSES:
        BookingClass.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "description": description,
                "preemptible": preemptible,
                "preempts": preempts,
                "needs_grant": needs_grant,
            },
        )
    _classes.clear()


def spot_discounts(pool_ids: Sequence[int]) -> dict[int, Decimal]:
    return dict(
        Pool.objects.filter(pk__in=list(pool_ids)).values_list("pk", "spot_discount_percent")
    )


def priced_for_class(
    options: list[PlacementOption],
    spec: WorkloadSpec,
    *,
    discounts: dict[int, Decimal] | None = None,
) -> list[PlacementOption]:
    """Options with the prices of the spec's class: spot parts at the pool's spot price (and
    the cost from it); other classes pay the pool's price. ``discounts`` (pool id to spot
    discount percent) when the caller has read them already, else they are read here."""
    if spec.booking_class != BookingClassSlug.SPOT or not options:
        return options
    if discounts is None:
        discounts = spot_discounts([p.pool_id for o in options for p in o.parts])
    hours = Decimal(str(spec.hours))
    out = []
    for option in options:
        parts = [
            dataclasses.replace(
                p,
                price_per_accelerator_hour=spot_price(
                    p.price_per_accelerator_hour, discounts.get(p.pool_id, Decimal(0))
                ),
            )
            for p in option.parts
        ]
        cost = sum(
            ((p.price_per_accelerator_hour or Decimal(0)) * p.accelerators * hours for p in parts),
            Decimal(0),
        ).quantize(Decimal("0.01"))
        note = "spot: " + ", ".join(
            f"{p.pool} {p.price_per_accelerator_hour} {p.currency}/h "
            f"({discounts.get(p.pool_id, Decimal(0))}% off; may be preempted)"
            for p in parts
        )
        out.append(
            dataclasses.replace(
                option, parts=parts, cost=cost, explanation=[*option.explanation, note]
            )
        )
    return out


def check_priority(org: Organization, spec: WorkloadSpec, *, lock: bool = False) -> None:
    """A priority booking needs the firm's grant, within its accelerator-hours (the grant row
    locked in the booking transaction, so concurrent bookings are counted one at a time)."""
    cls = booking_class(spec.booking_class)
    if not cls.needs_grant:
        return
    qs = PriorityGrant.objects.filter(organization=org)
    grant = (qs.select_for_update() if lock else qs).first()
    if grant is None:
        raise PermissionDenied(
            f"Your organization has no grant for the {cls.slug} class (priority.not_granted)."
        )
    used = Decimal(0)
    for b in Booking.objects.filter(
        organization=org,
        booking_class__slug=cls.slug,
        status__in=[*RESERVING_STATUSES, BookingStatus.FINISHED],
    ).only("accelerators", "window_start", "window_end"):
        used += Decimal(b.accelerators) * Decimal((b.window_end - b.window_start).total_seconds())
    used /= Decimal(3600)
    count = spec.count or max(1, round(spec.a100_equivalents))
    asked = Decimal(count) * Decimal(spec.duration.total_seconds()) / Decimal(3600)
    if lock:
        # Inside the booking transaction the new booking is already counted in ``used``.
        asked = Decimal(0)
    if used + asked > grant.accelerator_hours:
        raise QuotaExceeded(
            f"Priority grant ({grant.accelerator_hours} accelerator-hours) exceeded: "
            f"{used:.1f} booked in the priority class.",
            code="quota.priority_accelerator_hours",
        )


@transaction.atomic
def priority_grant_set(
    *, organization: Organization, actor: Actor, door: Door, accelerator_hours: int | None
) -> PriorityGrant | None:
    """Grant (or, with None, withdraw) the priority class to an organization: platform staff
    only, with a change record."""
    from registry import services as registry_services
    from registry.choices import ChangeAction

    if not registry_selectors.is_platform_staff(actor):
        raise PermissionDenied("Only platform staff grant the priority class.")
    existing = PriorityGrant.objects.select_for_update().filter(organization=organization).first()
    before = registry_services.snapshot(existing) if existing else None
    if accelerator_hours is None:
        if existing is not None:
            registry_services.change_record(
                obj=existing,
                action=ChangeAction.DELETE,
                actor=actor,
                door=door,
                before=before,
                after=None,
            )
            existing.delete()
        return None
    if accelerator_hours < 0:
        raise ValidationError({"accelerator_hours": ["Must not be negative."]})
    grant, created = PriorityGrant.objects.update_or_create(
        organization=organization,
        defaults={
            "accelerator_hours": accelerator_hours,
            "granted_by": actor if getattr(actor, "is_authenticated", False) else None,
        },
    )
    registry_services.change_record(
        obj=grant,
        action=ChangeAction.CREATE if created else ChangeAction.UPDATE,
        actor=actor,
        door=door,
        before=before,
        after=registry_services.snapshot(grant),
    )
    return grant


# --- Preemption --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Victim:
    """A spot booking that would give ``accelerators`` of one pool back."""

    booking_id: int
    national_id: str
    created_at: dt.datetime
    accelerators: int
    slots: frozenset[dt.datetime]


def _slot_rows(
    pool_id: int, start: dt.datetime, end: dt.datetime, *, lock: bool
) -> dict[dt.datetime, tuple[int, int]]:
    first, last = (ledger._db_time(x) for x in ledger.slot_bounds(start, end))
    suffix = " ORDER BY slot_start FOR UPDATE" if lock and ledger._is_postgres() else ""
    from brokers.placement.candidates import aware_utc

    with connection.cursor() as cur:
        cur.execute(
            "SELECT slot_start, reserved, spot_reserved FROM brokers_poolslot "
            f"WHERE pool_id = %s AND slot_start >= %s AND slot_start < %s{suffix}",
            [pool_id, first, last],
        )
        out = {}
        for slot, reserved, spot in cur.fetchall():
            moment = aware_utc(slot)
            assert moment is not None
            out[moment] = (int(reserved), int(spot))
        return out


def _spot_victims(pool_id: int, start: dt.datetime, end: dt.datetime) -> list[Victim]:
    """Spot bookings holding the pool during the window (what they hold there, which slots)."""
    first, last = ledger.slot_bounds(start, end)
    per: dict[int, Victim] = {}
    rows = (
        Allocation.objects.filter(
            pool_id=pool_id,
            booking__booking_class__slug=BookingClassSlug.SPOT,
            booking__status__in=RESERVING_STATUSES,
            booking__window_start__lt=last,
            booking__window_end__gt=first,
        )
        .values_list(
            "booking_id",
            "booking__national_id",
            "booking__created_at",
            "accelerators",
            "booking__window_start",
            "booking__window_end",
        )
        .order_by("booking_id")
    )
    for pk, nid, created, n, b_start, b_end in rows:
        slots = frozenset(ledger.slot_starts(b_start, b_end))
        held = per.get(pk)
        per[pk] = Victim(pk, nid, created, n + (held.accelerators if held else 0), slots)
    return list(per.values())


def plan_preemption(
    pool_id: int,
    n: int,
    start: dt.datetime,
    end: dt.datetime,
    capacity: int,
    *,
    lock: bool = False,
    chosen: Sequence[Victim] = (),
) -> list[Victim] | None:
    """The spot bookings to preempt so that ``n`` more firm accelerators fit on the pool over
    ``[start, end)``: ``[]`` if it fits already, None if it cannot fit even preempting every
    spot booking (the firm part is full). ``chosen``: victims already picked for another pool
    of the same booking (their room here counts as free).

    Which ones: :func:`choose_victims` (the fewest, then the youngest; exact for the few
    candidates that occur, greedy above :data:`EXACT_SEARCH_LIMIT`).
    """
    rows = _slot_rows(pool_id, start, end, lock=lock)
    already = {v.booking_id for v in chosen}
    holders = _spot_victims(pool_id, start, end)
    victims = [v for v in holders if v.booking_id not in already]
    freed = {v.booking_id: v for v in holders if v.booking_id in already}
    deficit: dict[dt.datetime, int] = {}
    for slot in ledger.slot_starts(start, end):
        reserved, spot = rows.get(slot, (0, 0))
        if reserved - spot + n > capacity:
            return None
        back = sum(v.accelerators for v in freed.values() if slot in v.slots)
        missing = reserved - back + n - capacity
        if missing > 0:
            deficit[slot] = missing
    return choose_victims(victims, deficit)


# How many candidate sets the exact choice may try (a few milliseconds); with more spot
# bookings in the way than that allows, the greedy choice stands (see choose_victims).
EXACT_SEARCH_LIMIT = 20_000


def _youngest_first(victims: Sequence[Victim]) -> list[Victim]:
    return sorted(victims, key=lambda v: (v.created_at, v.booking_id), reverse=True)


def _columns(
    victims: Sequence[Victim], deficit: Mapping[dt.datetime, int]
) -> tuple[list[int], list[tuple[int, ...]]]:
    """The deficit as columns: slots covered by the same victims need only their largest
    deficit (a set that covers it covers the others), so a window of many slots shrinks to at
    most a few columns per victim. Returns the need per column and each victim's row."""
    need: dict[frozenset[int], int] = {}
    for slot, missing in deficit.items():
        key = frozenset(i for i, v in enumerate(victims) if slot in v.slots)
        need[key] = max(need.get(key, 0), missing)
    keys = list(need)
    rows = [tuple(v.accelerators if i in key else 0 for key in keys) for i, v in enumerate(victims)]
    return [need[k] for k in keys], rows


def _greedy(order: list[Victim], deficit: Mapping[dt.datetime, int]) -> list[Victim] | None:
    """Greedily the booking that covers the most of what is still missing (the youngest among
    equals), then those whose room turns out not to be needed are dropped (the oldest first):
    never more than needed, but not always the fewest."""

    def covers(v: Victim, left: dict[dt.datetime, int]) -> int:
        return sum(min(v.accelerators, d) for s, d in left.items() if d > 0 and s in v.slots)

    def enough(group: list[Victim]) -> bool:
        return all(
            sum(v.accelerators for v in group if s in v.slots) >= d for s, d in deficit.items()
        )

    left = dict(deficit)
    picked: list[Victim] = []
    candidates = list(order)
    while any(d > 0 for d in left.values()):
        best = max(candidates, key=lambda v: covers(v, left), default=None)
        if best is None or covers(best, left) == 0:
            return None
        picked.append(best)
        candidates.remove(best)
        for s in best.slots:
            if s in left:
                left[s] -= best.accelerators
    for v in reversed(order):
        rest = [w for w in picked if w is not v]
        if v in picked and enough(rest):
            picked = rest
    return picked


def choose_victims(
    victims: Sequence[Victim],
    deficit: Mapping[dt.datetime, int],
    *,
    limit: int = EXACT_SEARCH_LIMIT,
) -> list[Victim] | None:
    """The spot bookings to preempt so that each slot of ``deficit`` gets back at least what it
    misses: ``[]`` if nothing is missing, None if all of them together are not enough.

    The fewest bookings; among as few, the youngest first: listing the candidates youngest
    first, the set whose positions come first in dictionary order (it holds the youngest
    booking if any smallest set does, then the next youngest, ...). A smallest set never holds
    one that is not needed. Sets are tried by increasing size, each size in that order, so the
    first set that is enough is the answer; with more than ``limit`` sets to try (many spot
    bookings in the way), the greedy choice is taken instead (:func:`_greedy`: never more than
    needed, not always the fewest) and logged.
    """
    if not deficit:
        return []
    order = [v for v in _youngest_first(victims) if any(s in v.slots for s in deficit)]
    need, rows = _columns(order, deficit)
    if not order or any(sum(col) < d for col, d in zip(zip(*rows, strict=True), need, strict=True)):
        return None  # all of them together are not enough
    # No smaller set can be enough: per column, the fewest victims whose largest rows add up.
    smallest = 1
    for c, d in enumerate(need):
        got = 0
        for k, n in enumerate(sorted((r[c] for r in rows), reverse=True), start=1):
            got += n
            if got >= d:
                smallest = max(smallest, k)
                break
    tried = 0
    for size in range(smallest, len(order) + 1):
        for combo in itertools.combinations(range(len(order)), size):
            tried += 1
            if tried > limit:
                logger.info(
                    "preemption: %d spot bookings in the way; greedy choice after %d sets",
                    len(order),
                    limit,
                )
                picked = _greedy(order, deficit)
                return None if picked is None else sorted(picked, key=lambda v: v.booking_id)
            if all(sum(rows[i][c] for i in combo) >= d for c, d in enumerate(need)):
                return sorted((order[i] for i in combo), key=lambda v: v.booking_id)
    return None  # not reached: all of them together are enough


class NeedsPreemption(CapacityExhausted):
    """A reserved or priority booking did not fit as things are; booked again preempting."""


def reserve_preempting(booking: Booking, parts: Sequence[Part]) -> list[Victim]:
    """Reserve a firm booking's parts, preempting spot bookings where it does not fit; in the
    caller's (the booking's) transaction. Returns the preempted bookings.

    The pools and their slots in the window are locked first, then the plan is made on what
    they hold, the victims preempted and the parts reserved: nothing can change in between.
    """
    start, end = booking.window_start, booking.window_end
    merged: dict[int, int] = {}
    for part in parts:
        merged[part.pool_id] = merged.get(part.pool_id, 0) + part.accelerators
    pools = ledger.lock_bookable_pools(merged)
    victims: list[Victim] = []
    for pool_id in sorted(merged):
        capacity, national_id = pools[pool_id]
        plan = plan_preemption(
            pool_id, merged[pool_id], start, end, capacity, lock=True, chosen=victims
        )
        if plan is None:
            raise CapacityExhausted(
                f"Not enough accelerators on {national_id} for the whole window, even "
                "preempting every spot booking."
            )
        victims += plan
    preempt(victims, by=booking)
    ledger.reserve(parts, start, end)
    return victims


def preempt(victims: Sequence[Victim], *, by: Booking) -> None:
    """Move each victim to ``preempted`` (compare-and-set, rows locked in id order), give its
    capacity back from now on, record the event (its webhook fires), and after commit stop its
    workload with a grace period and re-place it if it asked to."""
    from brokers import services

    for victim in sorted(victims, key=lambda v: v.booking_id):
        booking = Booking.objects.select_for_update().get(pk=victim.booking_id)
        was = booking.status
        reason = f"preempted by a {by.booking_class_id} booking ({by.national_id})"
        if not services._set_status(
            booking, allowed_from=RESERVING_STATUSES, to=BookingStatus.PREEMPTED, reason=reason
        ):
            raise CapacityExhausted("A spot booking moved meanwhile; retry.")
        services._release(booking)
        services._event(
            booking,
            EventKind.PREEMPTED,
            reason,
            {"by_class": by.booking_class_id, "grace_seconds": preemption_grace_seconds()},
        )
        # Its holds at the centers go (a Slurm reservation, released after commit).
        services._holds_on_commit(booking)
        if getattr(settings, "BROKER_DISPATCH", True):
            if was in (BookingStatus.DISPATCHING, BookingStatus.RUNNING):
                enqueue_on_commit(STOP_PREEMPTED_TASK, booking.pk)
            if booking.replace_on_preemption:
                enqueue_on_commit(REPLACE_PREEMPTED_TASK, booking.pk)


def preemption_options(
    spec: WorkloadSpec, *, organization_id: int | None, max_options: int
) -> list[PlacementOption]:
    """Options for a reserved or priority spec that does not fit as things are: placement
    measured on the firm part of the slots, each option with the spot bookings it preempts
    ("preempts 2 spot bookings on CN-...-P01"). Reads only."""
    from brokers.placement import place

    token = ledger.firm_view.set(True)
    try:
        result = place(
            spec, organization_id=organization_id, explain=False, max_options=max_options
        )
    finally:
        ledger.firm_view.reset(token)
    out = []
    for option in result.options:
        chosen: list[Victim] = []
        notes: list[Preemption] = []
        fits = True
        sizes = dict(
            Pool.objects.filter(pk__in=[p.pool_id for p in option.parts]).values_list(
                "pk", "accelerators"
            )
        )
        for part in option.parts:
            plan = plan_preemption(
                part.pool_id,
                part.accelerators,
                spec.start,
                spec.end,
                sizes[part.pool_id],
                chosen=chosen,
            )
            if plan is None:
                fits = False
                break
            chosen += plan
            if plan:
                notes.append(Preemption(part.pool, len(plan), sum(v.accelerators for v in plan)))
        if not fits:
            continue
        option.preemptions = notes
        option.explanation.append(
            "; ".join(
                f"preempts {n.bookings} spot booking{'s' if n.bookings != 1 else ''} on {n.pool}"
                for n in notes
            )
            or "fits without preempting"
        )
        out.append(option)
    return out


def replace_preempted(*, booking: Booking) -> Booking | None:
    """Book a preempted spot booking that asked for it again, elsewhere (same specification,
    from now if its start has passed, same duration); the old booking stays ``preempted`` with
    a ``replaced`` event and ``replaced_by``. Safe to run twice (one new booking at most)."""
    from brokers import services

    if booking.status != BookingStatus.PREEMPTED or not booking.replace_on_preemption:
        return None
    if booking.replaced_by_id:
        return booking.replaced_by
    spec = WorkloadSpec.from_json(booking.spec)
    spec = dataclasses.replace(spec, earliest_start=max(spec.start, _now()), latest_end=None)
    key = f"{booking.idempotency_key}~p{booking.pk}"[:100]
    existing = Booking.objects.filter(organization_id=booking.organization_id, idempotency_key=key)
    if existing.exists():
        return existing.first()
    result = services._place(
        spec, organization_id=booking.organization_id, explain=False, max_options=1
    )
    if not result.options:
        with transaction.atomic():
            services._event(booking, EventKind.ERROR, "no spot capacity to re-place it on")
        return None

    def attempt() -> Booking:
        new = services._book_option(
            org=booking.organization,
            actor=booking.created_by,
            door=Door(booking.door),
            spec=spec,
            option=result.options[0],
            idempotency_key=key,
            replaces=booking,
        )
        Booking.objects.filter(pk=booking.pk).update(replaced_by=new)
        services._event(
            booking,
            EventKind.REPLACED,
            f"re-placed after preemption as {new.national_id}",
            {"replaced_by": new.national_id},
        )
        return new

    try:
        return ledger.in_fresh_transactions(attempt)
    except (CapacityExhausted, IntegrityError):
        return existing.first()


# --- Resale ------------------------------------------------------------------------------------


def _new_offer_id() -> str:
    return f"OF-{timezone.now():%Y%m%d}-{secrets.token_hex(4).upper()}"


def open_offers() -> QuerySet[ResaleOffer]:
    """Offers anyone may buy now: open, not started (database time), booking still confirmed."""
    return ResaleOffer.objects.filter(
        status=OfferStatus.OPEN, expires_at__gt=Now(), booking__status=BookingStatus.CONFIRMED
    )


def offers_visible_to(user: Actor) -> QuerySet[ResaleOffer]:
    """An AI firm sees every open offer (without the seller's booking) and its own offers and
    purchases in any status; platform staff see all; operators none (they do not book)."""
    from registry.choices import OrgKind

    qs = ResaleOffer.objects.select_related("booking", "seller", "buyer", "bought")
    if registry_selectors.is_platform_staff(user):
        return qs
    org = registry_selectors.organization_of(user)
    if org is None or org.kind != OrgKind.AI_FIRM:
        return qs.none()
    is_open = Q(status=OfferStatus.OPEN, expires_at__gt=Now(), booking__status="confirmed")
    return qs.filter(is_open | Q(seller=org) | Q(buyer=org))


def offers_withdrawable_by(user: Actor) -> QuerySet[ResaleOffer]:
    """Only the seller (and platform staff) withdraw an offer; to anyone else it is not found."""
    qs = ResaleOffer.objects.select_related("booking", "seller", "buyer", "bought")
    if registry_selectors.is_platform_staff(user):
        return qs
    org = registry_selectors.organization_of(user)
    return qs.filter(seller=org) if org is not None else qs.none()


def offer_is_mine(user: Actor, offer: ResaleOffer) -> bool:
    """Whether the caller sold (or offers) it or bought it: they see the booking ids."""
    if registry_selectors.is_platform_staff(user):
        return True
    org = registry_selectors.organization_of(user)
    return org is not None and org.pk in (offer.seller_id, offer.buyer_id)


PRICE_MESSAGE = "A price that is not negative, at most 999999999999.99, e.g. 120.00."


def parse_price(value: object) -> Decimal:
    """An offer's price from what a door received (text or a number); the one refusal every
    door shows, on the ``price`` field."""
    from decimal import InvalidOperation

    try:
        price = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError({"price": [PRICE_MESSAGE]}) from None
    if not price.is_finite() or price < 0 or price >= Decimal("1e12"):
        raise ValidationError({"price": [PRICE_MESSAGE]})
    return price.quantize(Decimal("0.01"))


def offer_create(
    *,
    booking: Booking,
    actor: Actor,
    door: Door,
    price: Decimal,
    start: dt.datetime | None = None,
) -> ResaleOffer:
    """Offer a confirmed reserved booking that has not started (from ``start`` on, a whole
    slot boundary inside its window, or whole) for resale at ``price``."""
    from brokers import services

    org = services._require_booker(actor)
    if booking.organization_id != org.pk and not registry_selectors.is_platform_staff(actor):
        raise Booking.DoesNotExist("Booking matching query does not exist.")
    price = parse_price(price)
    # The same check as below without a lock, before any transaction: a refusal is a field
    # message at once (under the lock below, the state is checked again).
    if booking.status != BookingStatus.CONFIRMED:
        raise ValidationError(
            {"booking": [f"Only a confirmed booking is offered, not {booking.status}."]}
        )

    def work() -> ResaleOffer:
        b = Booking.objects.select_for_update().get(pk=booking.pk)
        now = _now()
        if b.status != BookingStatus.CONFIRMED:
            raise ValidationError(
                {"booking": [f"Only a confirmed booking is offered, not {b.status}."]}
            )
        if b.booking_class_id != BookingClassSlug.RESERVED:
            raise ValidationError({"booking": ["Only reserved bookings are offered for resale."]})
        if b.window_start <= now:
            raise ValidationError({"booking": ["The booking has started: nothing left to offer."]})
        at = b.window_start if start is None else start
        if at.tzinfo is None:
            raise ValidationError({"start": ["Give a time zone (e.g. 2026-11-23T08:00:00Z)."]})
        if at != b.window_start:
            if not b.window_start < at < b.window_end:
                raise ValidationError({"start": ["Inside the booking's window."]})
            if ledger.slot_bounds(at, at)[0] != at:
                raise ValidationError(
                    {"start": [f"Offer from a slot boundary ({ledger.slot_minutes()} minutes)."]}
                )
        try:
            with transaction.atomic():
                offer = ResaleOffer.objects.create(
                    national_id=_new_offer_id(),
                    booking=b,
                    seller=b.organization,
                    start=at,
                    end=b.window_end,
                    accelerators=b.accelerators,
                    price=price,
                    currency=b.currency,
                    expires_at=b.window_start,
                )
        except IntegrityError:
            raise ValidationError({"booking": ["This booking is already offered."]}) from None
        services._event(
            b,
            EventKind.OFFERED,
            f"offered for resale from {at:%Y-%m-%d %H:%M} UTC at {price} {b.currency} "
            f"({offer.national_id})",
            {"offer": offer.national_id, "price": str(price), "door": door},
        )
        return offer

    return ledger.in_fresh_transactions(work)


def offer_withdraw(*, offer: ResaleOffer, actor: Actor, door: Door) -> ResaleOffer:
    """The seller takes an open offer back (withdrawing twice is harmless)."""
    from brokers import services

    org = services._require_booker(actor)
    if offer.seller_id != org.pk and not registry_selectors.is_platform_staff(actor):
        raise ResaleOffer.DoesNotExist("ResaleOffer matching query does not exist.")
    # Past its start it has expired (recorded as such), whether the sweep ran or not.
    offers_expire(offer_ids=[offer.pk])
    with transaction.atomic():
        o = ResaleOffer.objects.select_for_update().get(pk=offer.pk)
        if o.status == OfferStatus.WITHDRAWN:
            return o
        if o.status != OfferStatus.OPEN:
            raise ValidationError({"offer": [f"The offer is {o.status}."]})
        o.status = OfferStatus.WITHDRAWN
        o.save(update_fields=["status"])
        services._event(
            o.booking,
            EventKind.WITHDRAWN,
            f"resale offer {o.national_id} withdrawn",
            {"door": door},
        )
    return o


def offers_close_for(booking: Booking) -> None:
    """A booking that leaves ``confirmed`` (cancelled, replaced, failed) takes its open offers
    back, each with a ``withdrawn`` event (in the caller's transaction, after its status
    event)."""
    from brokers import services

    for o in ResaleOffer.objects.select_for_update().filter(
        booking=booking, status=OfferStatus.OPEN
    ):
        ResaleOffer.objects.filter(pk=o.pk).update(status=OfferStatus.WITHDRAWN)
        services._event(
            booking,
            EventKind.WITHDRAWN,
            f"resale offer {o.national_id} withdrawn: the booking is {booking.status}",
            {"offer": o.national_id},
        )


def offers_expire(*, offer_ids: Sequence[int] | None = None) -> int:
    """The expiry sweep (``brokers.tasks.offers_expire``, every minute, ``setup_schedules``):
    open offers whose booking's start has passed (database time) become ``expired``, each by
    compare-and-set with an ``expired`` event on the seller's booking. Reads and purchases
    compare with the start themselves, so an offer is never sold late, however late the sweep;
    a buyer or seller who finds one past its start runs it for that offer (``offer_ids``).
    Safe to run twice and concurrently: an offer expires once, with one event."""
    from brokers import services

    due = ResaleOffer.objects.filter(status=OfferStatus.OPEN, expires_at__lte=Now())
    if offer_ids is not None:
        due = due.filter(pk__in=list(offer_ids))
    done = 0
    for pk in due.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            if not ResaleOffer.objects.filter(pk=pk, status=OfferStatus.OPEN).update(
                status=OfferStatus.EXPIRED
            ):
                continue  # sold, withdrawn or expired by someone else meanwhile
            o = ResaleOffer.objects.select_related("booking__organization").get(pk=pk)
            services._event(
                o.booking,
                EventKind.EXPIRED,
                f"resale offer {o.national_id} expired unsold at the booking's start "
                f"({o.expires_at:%Y-%m-%d %H:%M} UTC)",
                {"offer": o.national_id},
            )
            done += 1
    return done


class OfferExpired(CapacityExhausted):
    """The offer's booking has started: offers lapse at the start (``offer.not_open``)."""

    def __init__(self, offer: ResaleOffer) -> None:
        super().__init__(
            f"Offer {offer.national_id} has expired: offers lapse at the booking's start "
            f"({offer.expires_at:%Y-%m-%d %H:%M} UTC).",
            code="offer.not_open",
        )


def offer_buy(
    *, offer: ResaleOffer, actor: Actor, door: Door, image: str = "", command: str = ""
) -> Booking:
    """Buy an open offer: in one transaction, under a lock on the offer, a new confirmed booking
    of the buyer takes the offered allocations over (the slot counters do not move: the same
    accelerators stay reserved), the seller's booking is released from them (``sold`` when
    whole, shortened to the offer's start otherwise), and the money figures, events and
    webhooks are recorded on both sides. Exactly one buyer wins; the others are told the offer
    is gone (``offer.not_open``)."""
    from brokers import services

    org = services._require_booker(actor)
    if len(image) > 200 or len(command) > 1000 or "\x00" in image + command:
        raise ValidationError({"image": ["At most 200 characters (command: 1000), no NUL."]})

    # Checked again under the offer's lock below; refused here without a transaction.
    if offer.seller_id == org.pk:
        raise ValidationError({"offer": ["A firm does not buy its own offer."]})
    if offer.status == OfferStatus.OPEN and offer.expires_at <= _now():
        offers_expire(offer_ids=[offer.pk])
        raise OfferExpired(offer)
    if offer.status != OfferStatus.OPEN:
        raise CapacityExhausted(
            f"Offer {offer.national_id} is {offer.status}.", code="offer.not_open"
        )

    def work() -> Booking:
        o = ResaleOffer.objects.select_for_update().get(pk=offer.pk)
        if o.seller_id == org.pk:
            raise ValidationError({"offer": ["A firm does not buy its own offer."]})
        if o.status != OfferStatus.OPEN:
            raise CapacityExhausted(f"Offer {o.national_id} is {o.status}.", code="offer.not_open")
        seller = (
            Booking.objects.select_for_update().select_related("organization").get(pk=o.booking_id)
        )
        now = _now()
        # The start may have passed since the check above: refused (the sweep below records
        # the expiry once this transaction has rolled back).
        if o.expires_at <= now:
            raise OfferExpired(o)
        if seller.status != BookingStatus.CONFIRMED:
            raise CapacityExhausted(
                f"Offer {o.national_id} is no longer open (the booking is {seller.status}).",
                code="offer.not_open",
            )
        allocations = list(seller.allocations.select_related("pool__accelerator").order_by("pk"))
        hours = Decimal((o.end - o.start).total_seconds()) / Decimal(3600)
        per_hour = (o.price / (Decimal(o.accelerators) * hours)).quantize(Decimal("0.0001"))
        spec = WorkloadSpec(
            accelerator_model=allocations[0].pool.accelerator.slug,
            count=o.accelerators,
            earliest_start=o.start,
            duration=o.end - o.start,
            image=image,
            command=command,
        )
        bought = Booking.objects.create(
            national_id=services._new_booking_id(),
            organization=org,
            created_by=signed_in(actor),
            door=door,
            idempotency_key=f"buy:{o.national_id}",
            spec=spec.to_json(),
            status=BookingStatus.CONFIRMED,
            window_start=o.start,
            window_end=o.end,
            accelerators=o.accelerators,
            estimated_cost=o.price,
            currency=o.currency,
        )
        Allocation.objects.bulk_create(
            [
                Allocation(
                    booking=bought,
                    pool_id=a.pool_id,
                    accelerators=a.accelerators,
                    start=o.start,
                    end=o.end,
                    price_per_accelerator_hour=per_hour,
                )
                for a in allocations
            ]
        )
        whole = o.start == seller.window_start
        if whole:
            services._set_status(
                seller,
                allowed_from={BookingStatus.CONFIRMED},
                to=BookingStatus.SOLD,
                reason=f"sold to another firm ({o.national_id})",
            )
        else:
            # The seller's workload runs until the part it sold begins.
            kept = {
                **seller.spec,
                "duration": (o.start - seller.window_start).total_seconds(),
                "latest_end": None,
            }
            Allocation.objects.filter(booking=seller).update(end=o.start)
            Booking.objects.filter(pk=seller.pk).update(
                window_end=o.start, spec=kept, updated_at=now
            )
            seller.window_end = o.start
            seller.spec = kept
        o.status = OfferStatus.SOLD
        o.buyer = org
        o.bought = bought
        o.sold_at = now
        o.save(update_fields=["status", "buyer", "bought", "sold_at"])
        money = {"offer": o.national_id, "price": str(o.price), "currency": o.currency}
        services._event(
            seller,
            EventKind.SOLD,
            f"{'sold' if whole else 'part from ' + f'{o.start:%Y-%m-%d %H:%M} UTC sold'} for "
            f"{o.price} {o.currency} ({o.national_id})",
            {**money, "proceeds": str(o.price), "door": door},
        )
        webhook_emit(
            organization=seller.organization,
            event="booking.sold",
            data={"booking": seller.national_id, "status": seller.status, **money},
        )
        services._event(
            bought,
            EventKind.CREATED,
            f"bought {o.accelerators} accelerators from a resale offer for {o.price} {o.currency} "
            f"({o.national_id})",
            {"pools": [a.pool.national_id for a in allocations], "replaces": "", **money},
        )
        webhook_emit(
            organization=org,
            event="booking.bought",
            data={
                "booking": bought.national_id,
                "status": bought.status,
                **money,
                "cost": str(o.price),
            },
        )
        services._check_quota(org, o.start, o.end, o.accelerators, exclude=bought.pk)
        if getattr(settings, "BROKER_DISPATCH", True):
            # At the centers, the seller's holds go before the buyer's are made (one task, in
            # that order); the relay starts the bought booking at its start.
            enqueue_on_commit(HOLDS_MOVED_TASK, seller.pk, bought.pk)
        return bought

    try:
        return ledger.in_fresh_transactions(work)
    except OfferExpired:
        offers_expire(offer_ids=[offer.pk])
        raise


def offer_options(spec: WorkloadSpec, *, organization_id: int | None) -> list[PlacementOption]:
    """Open offers of other firms that fit the spec (its model, at least its count, starting
    inside its window), as placement options with their price (buy them by offer id)."""
    from brokers.placement.spec import OptionPart

    if not spec.accelerator_model:
        return []
    latest = spec.latest_end or spec.end
    qs = (
        open_offers()
        .filter(accelerators__gte=spec.count, start__gte=spec.start, start__lt=latest)
        .exclude(seller_id=organization_id)
        .order_by("price", "id")[:5]
    )
    out = []
    for o in qs:
        allocations = list(
            o.booking.allocations.select_related(
                "pool__center__cluster__hub", "pool__accelerator"
            ).order_by("pk")
        )
        if any(a.pool.accelerator.slug != spec.accelerator_model for a in allocations):
            continue
        hours = Decimal((o.end - o.start).total_seconds()) / Decimal(3600)
        per_hour = (o.price / (Decimal(o.accelerators) * hours)).quantize(Decimal("0.0001"))
        parts = [
            OptionPart(
                pool_id=a.pool_id,
                pool=a.pool.national_id,
                center=a.pool.center.national_id,
                hub=a.pool.center.cluster.hub.code,
                accelerator=a.pool.accelerator.slug,
                accelerators=a.accelerators,
                price_per_accelerator_hour=per_hour,
                currency=o.currency,
            )
            for a in allocations
        ]
        out.append(
            PlacementOption(
                parts=parts,
                score=0.0,
                cost=o.price,
                currency=o.currency,
                transfer_seconds=0.0,
                green_power_share=0.0,
                explanation=[
                    f"resale offer {o.national_id}: {o.accelerators} accelerators on "
                    + ", ".join(p.pool for p in parts)
                    + f" from {o.start:%Y-%m-%d %H:%M} to {o.end:%Y-%m-%d %H:%M} UTC for "
                    f"{o.price} {o.currency} (buy it: interconnect buy {o.national_id})"
                ],
                offer=o.national_id,
            )
        )
    return out


def offer_view(offer: ResaleOffer, user: Actor) -> dict[str, Any]:
    """What the caller may see of an offer (every door renders this): the seller's booking
    only for the seller, the bought booking only for the buyer, never the other firm."""
    org = registry_selectors.organization_of(user)
    staff = registry_selectors.is_platform_staff(user)
    seller = staff or (org is not None and org.pk == offer.seller_id)
    buyer = staff or (org is not None and org.pk == offer.buyer_id)
    status = offer.status
    if status == OfferStatus.OPEN and (
        offer.expires_at <= timezone.now() or offer.booking.status != BookingStatus.CONFIRMED
    ):
        status = OfferStatus.EXPIRED
    source = offer.bought if offer.bought is not None else offer.booking
    parts: dict[str, int] = {}
    for a in source.allocations.select_related("pool").order_by("pk"):
        parts[a.pool.national_id] = parts.get(a.pool.national_id, 0) + a.accelerators
    return {
        "offer_id": offer.national_id,
        "status": status,
        "start": offer.start,
        "end": offer.end,
        "accelerators": offer.accelerators,
        "price": offer.price,
        "currency": offer.currency,
        "expires_at": offer.expires_at,
        "parts": [{"pool": pool, "accelerators": n} for pool, n in parts.items()],
        "booking_id": offer.booking.national_id if seller else "",
        "bought_booking_id": offer.bought.national_id if buyer and offer.bought is not None else "",
        "mine": org is not None and org.pk == offer.seller_id,
    }


def offers_in_window(
    user: Actor,
    *,
    start: dt.datetime,
    end: dt.datetime,
    accelerator_model: str = "",
    hub: str = "",
    limit: int = 20,
    probed: bool = False,
) -> list[ResaleOffer]:
    """Open offers of other firms overlapping ``[start, end)`` (capacity queries), cheapest
    first. ``probed``: the caller read (``services.capacity_query_probed``) that some offer is
    open over the window; it skips the probe."""
    window = Q(start__lt=end, end__gt=start)
    # Most capacity queries find no open offer in their window: a one-table probe (planned in
    # a fraction of a millisecond) spares them the joined query below, whose planning was most
    # of a QueryCapacity call (issue 14). Same answers: the query below only narrows this set.
    if not probed:
        probe = ResaleOffer.objects.filter(window, status=OfferStatus.OPEN, expires_at__gt=Now())
        if not probe.exists():
            return []
    org = registry_selectors.organization_of(user)
    qs = open_offers().filter(window)
    if org is not None:
        qs = qs.exclude(seller=org)
    if accelerator_model or hub:
        # A semi-join on the booking's allocations, not a join with DISTINCT: the same offers,
        # and PostgreSQL plans it in a fraction of the time (planning the 12-table DISTINCT
        # join was most of a QueryCapacity call, issue 14). An allocation matching the model
        # and one matching the hub may be different ones, as with the two joins before.
        allocations = Allocation.objects.all()
        if accelerator_model:
            qs = qs.filter(
                booking_id__in=allocations.filter(pool__accelerator__slug=accelerator_model).values(
                    "booking_id"
                )
            )
        if hub:
            qs = qs.filter(
                booking_id__in=allocations.filter(pool__center__cluster__hub__code=hub).values(
                    "booking_id"
                )
            )
    return list(qs.select_related("booking", "bought").order_by("price", "id")[:limit])
