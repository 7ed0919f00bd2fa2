"""Every write of the broker goes through a function here; every door calls these.

Services are keyword-only and typed, take the acting user and the door, keep the capacity
invariant through :mod:`brokers.ledger`, write booking events, and enqueue dispatch on commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.db.models.functions import Now
from django.utils import timezone

from brokers import booking_sql, ledger, vocabulary
from brokers.choices import (
    CANCELLABLE_STATUSES,
    RESERVING_STATUSES,
    BookingClassSlug,
    BookingStatus,
    EventKind,
)
from brokers.errors import (
    CapacityExhausted,
    IdempotencyKeyReused,
    QuotaExceeded,
    RetryableConflict,
)
from brokers.ledger import Part
from brokers.models import Allocation, Booking, BookingEvent, Quota, UsageRecord
from brokers.placement import PlacementOption, PlacementResult, WorkloadSpec, catalog, place
from brokers.placement.engine import explain_counts
from brokers.placement.filters import Context, needs_network, option_rejections
from brokers.placement.network import Network, current_network
from brokers.placement.spec import Candidate, Rejection, spot_price
from interconnect.metrics import BOOKINGS, refusals_counted
from interconnect.tasking import enqueue_on_commit
from registry import selectors as registry_selectors
from registry import services as registry_services
from registry.actors import Actor, signed_in
from registry.choices import ChangeAction, Door, OrgKind, Status
from registry.models import Organization, Pool
from registry.webhooks import WEBHOOK_DELIVER_TASK, webhook_emit

# Sent by name (interconnect.tasking): services never import task modules.
DISPATCH_DUE_BOOKINGS_TASK = "brokers.tasks.dispatch_due_bookings"
BOOKING_STOP_TASK = "brokers.tasks.booking_stop"
BOOKING_REPLACE_TASK = "brokers.tasks.booking_replace"
BOOKING_HOLDS_TASK = "brokers.tasks.booking_holds"
# How many times a booking from a specification is re-placed when its first choice was taken
# meanwhile (each attempt in a new transaction, on fresh free-capacity figures).
REPLACE_ATTEMPTS = 3


def _now() -> dt.datetime:
    return timezone.now()


def _require_org(actor: Actor) -> Organization:
    org = registry_selectors.organization_of(actor)
    if org is None:
        raise PermissionDenied("Authenticate as a member of an organization.")
    return org


def _require_booker(actor: Actor) -> Organization:
    org = _require_org(actor)
    if org.kind not in (OrgKind.AI_FIRM, OrgKind.PLATFORM):
        raise PermissionDenied("Only AI firms book capacity.")
    return org


# --- Capacity and placement --------------------------------------------------------------------


@dataclass(frozen=True)
class CapacityRow:
    """Free, verified capacity of one pool over a window."""

    pool: str
    center: str
    hub: str
    cluster: str
    accelerator: str
    accelerators: int
    free: int
    price_per_accelerator_hour: Decimal | None
    currency: str
    intra_node_interconnect: str
    inter_node_interconnect: str
    green_power_share: float
    a100_equivalent_per_accelerator: float
    # What a spot booking pays here (the price less the pool's spot discount).
    spot_price_per_accelerator_hour: Decimal | None = None


def _capacity_row(pool: Candidate, free: int, cluster: str) -> CapacityRow:
    return CapacityRow(
        pool=pool.national_id,
        center=pool.center_national_id,
        hub=pool.hub,
        cluster=cluster,
        accelerator=pool.accelerator,
        accelerators=pool.accelerators,
        free=free,
        price_per_accelerator_hour=pool.price,
        currency=pool.currency,
        intra_node_interconnect=pool.intra_node_interconnect,
        inter_node_interconnect=pool.inter_node_interconnect,
        green_power_share=pool.green_power_share,
        a100_equivalent_per_accelerator=round(pool.a100_per_accelerator, 3),
    )


def capacity_query(
    *,
    actor: Actor,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    accelerator_model: str = "",
    hub: str = "",
    cluster: str = "",
    interconnect: str = "",
    max_price: Decimal | None = None,
    min_free: int = 1,
    page_size: int = 100,
    page_token: str = "",
) -> tuple[list[CapacityRow], str]:
    """Verified (``active``) pools with free accelerators over ``[start, end)``, by national id,
    one page at a time; returns the rows and the token of the next page ("" at the end)."""
    rows, token, _ = capacity_query_probed(
        actor=actor,
        start=start,
        end=end,
        accelerator_model=accelerator_model,
        hub=hub,
        cluster=cluster,
        interconnect=interconnect,
        max_price=max_price,
        min_free=min_free,
        page_size=page_size,
        page_token=page_token,
    )
    return rows, token


def capacity_query_probed(
    *,
    actor: Actor,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    accelerator_model: str = "",
    hub: str = "",
    cluster: str = "",
    interconnect: str = "",
    max_price: Decimal | None = None,
    min_free: int = 1,
    page_size: int = 100,
    page_token: str = "",
    offers_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[list[CapacityRow], str, bool | None]:
    """``capacity_query``, and with ``offers_window`` whether any resale offer is open over it,
    read by the same statement as the free capacity (``catalog.capacity_page``): False spares
    the caller ``market.offers_in_window`` over that window; None when it was not read (no
    pool to read, not PostgreSQL)."""
    start = start or _now()
    end = end or start + dt.timedelta(hours=1)
    if end <= start:
        raise ValidationError({"end": ["The window ends after it starts."]})
    if not 1 <= page_size <= 1000:
        raise ValidationError({"page_size": ["Between 1 and 1000."]})
    vocabulary.check(
        accelerator_model=("accelerator_model", [accelerator_model]),
        hub=("hub", [hub]),
        cluster=("cluster", [cluster]),
        interconnect=("interconnect", [interconnect]),
    )
    # One listing whether or not this process keeps the pool snapshot: the snapshot (or the
    # database) proposes pools by national id, status and free capacity are read fresh.
    page, token, offers = catalog.capacity_page(
        catalog.current(),
        start=start,
        end=end,
        model=accelerator_model,
        hub=hub,
        cluster=cluster,
        interconnect=interconnect,
        max_price=max_price,
        min_free=min_free,
        page_size=page_size,
        page_token=page_token,
        offers_window=offers_window,
    )
    # The spot discount came with the free capacity (the same query): no second read.
    rows = [
        dataclasses.replace(
            _capacity_row(p, free, code),
            spot_price_per_accelerator_hour=spot_price(p.price, discount),
        )
        for p, free, code, discount in page
    ]
    return rows, token, offers


def placement_preview(
    *, spec: WorkloadSpec, actor: Actor, explain: bool = True, max_options: int = 5
) -> PlacementResult:
    """Ranked placement options for ``spec`` with every rejection explained; books nothing."""
    org = _require_org(actor)
    spec = spec.validated(now=_now())
    vocabulary.check_spec(spec)
    from brokers import market

    result = _place(spec, organization_id=org.pk, explain=explain, max_options=max_options)
    # Resale offers of other firms that fit, with their price (bought by offer id).
    result.options += market.offer_options(spec, organization_id=org.pk)
    return result


def _place(
    spec: WorkloadSpec, *, organization_id: int | None, explain: bool, max_options: int
) -> PlacementResult:
    """Placement for the spec's booking class: spot options at spot prices; a reserved or
    priority spec that fits nowhere as things are gets the options that preempt spot bookings
    (each says how many, on which pool)."""
    from brokers import market

    result = place(spec, organization_id=organization_id, explain=explain, max_options=max_options)
    if not result.options and market.booking_class(spec.booking_class).preempts:
        result.options = market.preemption_options(
            spec, organization_id=organization_id, max_options=max_options
        )
    result.options = market.priced_for_class(result.options, spec)
    return result


# --- Bookings ----------------------------------------------------------------------------------


def _new_booking_id() -> str:
    return f"BK-{_now():%Y%m%d}-{secrets.token_hex(4).upper()}"


# Booking status (or event kind) -> the webhook event the firm's subscribers receive.
WEBHOOK_FOR_STATUS: dict[str, str] = {
    BookingStatus.RUNNING: "booking.started",
    BookingStatus.FINISHED: "booking.finished",
    BookingStatus.REPLACED: "booking.replaced",
    BookingStatus.CANCELLED: "booking.cancelled",
    BookingStatus.PREEMPTED: "booking.preempted",
}


def _offers_close_for(booking: Booking) -> None:
    from brokers import market

    market.offers_close_for(booking)


def _event(
    booking: Booking, kind: EventKind, message: str = "", data: dict[str, Any] | None = None
) -> BookingEvent:
    """Record a booking event (the WatchBooking stream) and, in the same transaction, the
    webhook deliveries it triggers for the firm (sent after commit)."""
    event = BookingEvent.objects.create(
        booking=booking, kind=kind, status=booking.status, message=message[:500], data=data or {}
    )
    hook = "booking.placed" if kind == EventKind.CREATED else WEBHOOK_FOR_STATUS.get(booking.status)
    already = kind != EventKind.CREATED and (
        BookingEvent.objects.filter(booking=booking, status=booking.status)
        .exclude(pk=event.pk)
        .exists()
    )
    if hook and not already:
        webhook_emit(
            organization=booking.organization,
            event=hook,
            data={
                "booking": booking.national_id,
                "status": booking.status,
                "message": message[:500],
            },
        )
    return event


def _check_quota(
    org: Organization, start: dt.datetime, end: dt.datetime, n: int, *, exclude: int
) -> None:
    """Refuse the booking if a quota of the firm would be exceeded; names the quota.

    The quota row is locked, so concurrent bookings of one firm are checked one at a time.
    "Concurrent" is counted conservatively: every reserving booking overlapping the window.
    """
    quota = Quota.objects.select_for_update().filter(organization=org).first()
    if quota is None:
        return
    mine = Booking.objects.filter(organization=org, status__in=RESERVING_STATUSES).exclude(
        pk=exclude
    )
    if quota.max_concurrent_accelerators is not None:
        held = (
            mine.filter(window_start__lt=end, window_end__gt=start).aggregate(
                n=Sum("accelerators")
            )["n"]
            or 0
        )
        if held + n > quota.max_concurrent_accelerators:
            raise QuotaExceeded(
                f"Quota max_concurrent_accelerators ({quota.max_concurrent_accelerators}) "
                f"exceeded: {held} held in the window, {n} requested.",
                code="quota.max_concurrent_accelerators",
            )
    if quota.max_accelerator_hours_per_month is not None:
        month = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (month + dt.timedelta(days=32)).replace(day=1)
        used = Decimal(0)
        for b in mine.filter(window_start__gte=month, window_start__lt=next_month).only(
            "accelerators", "window_start", "window_end"
        ):
            used += Decimal(b.accelerators) * Decimal(
                (b.window_end - b.window_start).total_seconds() / 3600
            )
        asked = Decimal(n) * Decimal((end - start).total_seconds() / 3600)
        if used + asked > quota.max_accelerator_hours_per_month:
            raise QuotaExceeded(
                f"Quota max_accelerator_hours_per_month ({quota.max_accelerator_hours_per_month}) "
                f"exceeded: {used:.1f} booked this month, {asked:.1f} requested.",
                code="quota.max_accelerator_hours_per_month",
            )


def _dispatch_on_commit(booking: Booking) -> None:
    """After commit, kick the dispatch relay if the booking starts within one relay period.

    Later starts are left to the periodic relay (``dispatch_due_bookings``): no message waits
    with a long ETA (Redis would redeliver it every visibility timeout), and a kick lost at
    commit only delays the start until the next relay run.
    """
    if not getattr(settings, "BROKER_DISPATCH", True):
        return
    _holds_on_commit(booking)

    wait = (booking.window_start - _now()).total_seconds()
    if wait > DISPATCH_RELAY_SECONDS:
        return
    countdown = max(0.0, wait)
    enqueue_on_commit(DISPATCH_DUE_BOOKINGS_TASK, countdown=countdown)


def _holds_on_commit(booking: Booking) -> None:
    """After commit, bring the centers' holds in line with the booking's status: a confirmed
    booking is held at its centers (a Slurm center makes an advance reservation; one that
    cannot makes the booking re-placed), a cancelled or re-placed one is released there."""
    if not getattr(settings, "BROKER_DISPATCH", True):
        return
    enqueue_on_commit(BOOKING_HOLDS_TASK, booking.pk)


# The relay runs this often (``setup_schedules``); a booking starts at most this late.
DISPATCH_RELAY_SECONDS = 10
# A booking claimed for dispatch whose workloads are still not started after this long lost its
# dispatch task (message lost, worker killed before the start): the relay claims it again. Above
# the task time limit, so a dispatch still in progress is never doubled.
DISPATCH_STALE_SECONDS = 360


def booking_dispatch_claim(*, booking_id: int, relay: str = "") -> bool:
    """Claim a confirmed booking whose start is due (database clock) for dispatch.

    Compare-and-set ``confirmed -> dispatching``: of any number of relays (or beats) racing for
    it, exactly one gets True and dispatches it; the others leave it alone. ``relay`` (the relay
    task's id) is written on the claim's event, so that the same relay, redelivered after its
    worker died between the claim and the send, finds what it claimed
    (:func:`bookings_claimed_by`).
    """
    with transaction.atomic():
        claimed = Booking.objects.filter(
            pk=booking_id, status=BookingStatus.CONFIRMED, window_start__lte=Now()
        ).update(
            status=BookingStatus.DISPATCHING,
            status_reason="dispatching to the centers",
            updated_at=Now(),
        )
        if claimed:
            booking = Booking.objects.select_related("organization").get(pk=booking_id)
            _event(
                booking,
                EventKind.STATUS,
                "dispatching to the centers",
                data={"relay": relay} if relay else None,
            )
    return bool(claimed)


def bookings_claimed_by(*, relay: str, limit: int) -> list[int]:
    """Ids of the bookings relay ``relay`` claimed whose workloads are not all started yet.

    A relay task runs again under the same id only when its worker died before acknowledging
    it, possibly between claiming bookings and sending their dispatch messages: those claims
    would wait ``DISPATCH_STALE_SECONDS`` for the stale sweep. The redelivered relay sends them
    again at once; a second dispatch message is harmless (``StartWorkload`` is idempotent per
    workload, and the start is recorded once).
    """
    return list(
        Booking.objects.filter(
            status=BookingStatus.DISPATCHING,
            allocations__workload_id="",
            events__kind=EventKind.STATUS,
            events__status=BookingStatus.DISPATCHING,
            events__data__relay=relay,
        )
        .distinct()
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )


def booking_dispatch_reclaim(*, booking_id: int) -> bool:
    """Claim again a ``dispatching`` booking whose dispatch task was lost before it started
    every workload (``DISPATCH_STALE_SECONDS`` after its claim). Compare-and-set on the claim
    time, so one relay wins; starting again is safe (``StartWorkload`` is idempotent)."""
    stale = Now() - dt.timedelta(seconds=DISPATCH_STALE_SECONDS)
    return bool(
        Booking.objects.filter(
            pk=booking_id, status=BookingStatus.DISPATCHING, updated_at__lte=stale
        ).update(updated_at=Now())
    )


def bookings_due_for_dispatch(*, limit: int) -> tuple[list[int], list[int]]:
    """Ids of confirmed bookings whose start is due, and of claimed bookings whose dispatch
    went stale (a workload not started ``DISPATCH_STALE_SECONDS`` after the claim)."""
    due = Booking.objects.filter(status=BookingStatus.CONFIRMED, window_start__lte=Now())
    stale = Booking.objects.filter(
        status=BookingStatus.DISPATCHING,
        updated_at__lte=Now() - dt.timedelta(seconds=DISPATCH_STALE_SECONDS),
        allocations__workload_id="",
    ).distinct()
    return (
        list(due.order_by("window_start", "pk").values_list("pk", flat=True)[:limit]),
        list(stale.order_by("pk").values_list("pk", flat=True)[:limit]),
    )


def _book_option(
    *,
    org: Organization,
    actor: Actor | None,
    door: Door,
    spec: WorkloadSpec,
    option: PlacementOption,
    idempotency_key: str,
    replaces: Booking | None = None,
    hold_seconds: float | None = None,
    hold_until: dt.datetime | None = None,
    fingerprint: str = "",
    preempting: bool = False,
) -> Booking:
    """One attempt, inside the caller's transaction: booking, allocations, event, quota, ledger.

    A reserved or priority booking that does not fit raises ``NeedsPreemption`` (the hot path
    stays one upsert); the caller then tries once more with ``preempting``.

    ``hold_seconds`` books it held for that long (database time); ``hold_until`` books it held
    until that instant (a re-placed hold keeps the expiry the firm was given).
    """
    start, end = spec.start, spec.end
    total = option.accelerators
    held = hold_seconds is not None or hold_until is not None
    expires: Any = None
    if hold_until is not None:
        expires = hold_until
    elif hold_seconds is not None:
        # The hold's lapse is measured on the database's clock, like its expiry sweep.
        expires = Now() + dt.timedelta(seconds=hold_seconds)
    booking = Booking.objects.create(
        national_id=_new_booking_id(),
        organization=org,
        created_by=signed_in(actor),
        door=door,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        spec=spec.to_json(),
        status=BookingStatus.HELD if held else BookingStatus.CONFIRMED,
        hold_expires_at=expires,
        window_start=start,
        window_end=end,
        accelerators=total,
        estimated_cost=option.cost,
        currency=option.currency,
        booking_class_id=spec.booking_class,
        replace_on_preemption=spec.replace_on_preemption,
    )
    # Rows of this booking first, the shared locks last: quota row, then pools and their slot
    # counters, so the hottest locks (a busy pool's slots) are held only from the upsert to
    # the commit. Any refusal rolls all of it back.
    Allocation.objects.bulk_create(
        [
            Allocation(
                booking=booking,
                pool_id=p.pool_id,
                accelerators=p.accelerators,
                start=start,
                end=end,
                price_per_accelerator_hour=p.price_per_accelerator_hour,
            )
            for p in option.parts
        ]
    )
    _event(
        booking,
        EventKind.CREATED,
        f"booked {total} accelerators on " + ", ".join(p.pool for p in option.parts),
        {
            "pools": [p.pool for p in option.parts],
            "replaces": replaces.national_id if replaces else "",
        },
    )
    _check_quota(org, start, end, total, exclude=booking.pk)
    parts = [Part(p.pool_id, p.accelerators) for p in option.parts]
    from brokers import market

    cls = market.booking_class(spec.booking_class)
    if cls.needs_grant:
        market.check_priority(org, spec, lock=True)
    if preempting and cls.preempts:
        # Second attempt of a firm booking that did not fit: spot bookings give room back in
        # this same transaction (rolled back with it if anything below refuses).
        victims = market.reserve_preempting(booking, parts)
        if victims:
            _event(
                booking,
                EventKind.STATUS,
                f"preempted {len(victims)} spot booking{'s' if len(victims) != 1 else ''}",
                {"preempted": len(victims)},
            )
    else:
        try:
            ledger.reserve(parts, start, end, spot=cls.preemptible)
        except CapacityExhausted as exc:
            if cls.preempts and exc.code == "booking.capacity_exceeded":
                raise market.NeedsPreemption(exc.detail) from exc
            raise
    if not held:
        _dispatch_on_commit(booking)
    return booking


def option_from_parts(
    *, spec: WorkloadSpec, parts: Sequence[tuple[str, int]], actor: Actor
) -> PlacementOption:
    """A placement option the client chose (pool national ids and counts), checked against what
    the client may see and against the spec's constraints; capacity is checked by the ledger.

    The pools come from the process's pool snapshot when it holds them (no round trip): a pool
    there is bookable, an active pool in an active center, so listed, and every actor may see
    it. Any other pool (listed but degraded or offline, a firm's own unlisted pool, any pool
    for staff, one the snapshot has not caught up with) is read through the visibility rules
    (``pools_visible_to``). The snapshot's facts are at most moments old, as for a placement
    from a specification; status and capacity are checked again under lock by the ledger.

    The option must be one placement could propose for the spec
    (:func:`brokers.placement.filters.option_rejections`: every static filter on each pool,
    the very functions placement runs, and the split rules); otherwise ``ValidationError`` on
    ``option`` naming each pool, the placement reason code and placement's sentence. The option
    comes back priced for the spec's class (:func:`brokers.market.priced_for_class`, spot at
    the spot discount read once here): the price the cap was checked against is the price the
    booking is charged."""
    if not parts:
        raise ValidationError({"option": ["An option needs at least one part."]})
    ids = [nid for nid, _ in parts]
    pools: dict[str, Candidate] = {}
    snapshot = catalog.current()
    if snapshot is not None:
        for nid in ids:
            cand = snapshot.by_national_id.get(nid)
            if cand is not None:
                pools[nid] = cand
    unresolved = [nid for nid in ids if nid not in pools]
    if unresolved:
        # One statement: the visible pools' ids as a subquery of the facts' query.
        visible = (
            registry_selectors.pools_visible_to(actor)
            .filter(national_id__in=sorted(set(unresolved)))
            .values("pk")
        )
        sql, params = visible.query.sql_with_params()
        # Traits matter only to the traits and interconnect filters.
        with_traits = bool(spec.traits or spec.interconnect)
        pools.update(
            (c.national_id, c) for c in catalog.pool_facts(sql, params, with_traits=with_traits)
        )
    errors = [nid for nid in ids if nid not in pools]
    if errors:
        raise ValidationError({"option": [f"Unknown pool {nid}." for nid in errors]})
    from brokers import market
    from brokers.placement.spec import OptionPart

    for nid, n in parts:
        if n < 1:
            raise ValidationError({"option": [f"{nid}: at least one accelerator."]})
        pool = pools[nid]
        if spec.accelerator_model and pool.accelerator != spec.accelerator_model:
            raise ValidationError({"option": [f"{nid} has {pool.accelerator}."]})
    if spec.accelerator_model and sum(n for _, n in parts) != spec.count:
        raise ValidationError({"option": ["The parts must add up to the requested count."]})
    discounts: dict[int, Decimal] | None = None
    if spec.booking_class == BookingClassSlug.SPOT:
        # Read fresh, once: the spot price checked against the cap is the one charged.
        discounts = market.spot_discounts(sorted({p.pool_id for p in pools.values()}))
        pools = {
            nid: dataclasses.replace(c, spot_discount_percent=discounts.get(c.pool_id, Decimal(0)))
            for nid, c in pools.items()
        }
    # The network is read only when the latency class asks it (interactive work near its data).
    ctx = Context(network=current_network() if needs_network(spec) else Network({}))
    refusals = option_rejections(spec, [(pools[nid], n) for nid, n in parts], ctx)
    if refusals:
        raise ValidationError({"option": [option_refusal_message(r) for r in refusals]})
    option_parts = [
        OptionPart(
            pool_id=pools[nid].pool_id,
            pool=nid,
            center=pools[nid].center_national_id,
            hub=pools[nid].hub,
            accelerator=pools[nid].accelerator,
            accelerators=n,
            price_per_accelerator_hour=pools[nid].price,
            currency=pools[nid].currency,
        )
        for nid, n in parts
    ]
    hours = Decimal(str(spec.hours))
    cost = sum(
        (
            (p.price_per_accelerator_hour or Decimal(0)) * p.accelerators * hours
            for p in option_parts
        ),
        Decimal(0),
    ).quantize(Decimal("0.01"))
    option = PlacementOption(
        parts=option_parts,
        score=0.0,
        cost=cost,
        currency=option_parts[0].currency,
        transfer_seconds=0.0,
        green_power_share=0.0,
    )
    return market.priced_for_class([option], spec, discounts=discounts)[0]


def option_refusal_message(rejection: Rejection) -> str:
    """What every door says of a chosen option placement would not propose: the pool, the
    placement reason code and placement's own sentence (the option as a whole when no pool)."""
    if rejection.pool:
        return (
            f"{rejection.pool} is refused by placement ({rejection.reason_code}): "
            f"{rejection.detail}."
        )
    return f"The option is refused by placement ({rejection.reason_code}): {rejection.detail}."


def request_fingerprint(
    spec: WorkloadSpec, option: Sequence[tuple[str, int]] | None, hold: bool
) -> str:
    """SHA-256 of a booking request as the firm sent it (before defaults are filled), the same
    whichever door carried it: numbers and times normalised, lists of names sorted."""

    def norm(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
        if isinstance(value, dt.timedelta):
            return norm(value.total_seconds())
        if isinstance(value, Decimal):
            return format(value.normalize(), "f")
        if isinstance(value, float | int) and not isinstance(value, bool):
            return format(Decimal(repr(float(value))).normalize(), "f")
        if isinstance(value, tuple | list):
            return sorted(norm(v) for v in value)
        return value

    fields = {f.name: norm(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    body = {
        "spec": fields,
        "option": sorted([str(p), int(n)] for p, n in option or ()),
        "hold": bool(hold),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _existing(org: Organization, key: str, fingerprint: str = "") -> Booking | None:
    """The firm's booking of ``key``, if any; ``IdempotencyKeyReused`` when that booking was
    made for another request (a booking older than fingerprints is returned as before)."""
    found = Booking.objects.filter(organization=org, idempotency_key=key).first()
    if found is not None and fingerprint and found.request_fingerprint not in ("", fingerprint):
        raise IdempotencyKeyReused(key, found.national_id)
    return found


def _book_in_one_trip(
    *,
    org: Organization,
    actor: Actor,
    door: Door,
    spec: WorkloadSpec,
    option: PlacementOption,
    idempotency_key: str,
    hold_seconds: float | None,
    fingerprint: str,
) -> Booking | None:
    """:func:`_book_option` in one round trip (``brokers.booking_sql``), with the webhook and
    dispatch kicks after commit. None when the function leaves the booking to the Python path
    (a firm with a quota). The booking returned is built from what the statement answered,
    never read back; ``booked_parts`` keeps the option's parts for the reply."""
    held = hold_seconds is not None
    status = BookingStatus.HELD if held else BookingStatus.CONFIRMED
    national_id = _new_booking_id()
    message = f"booked {option.accelerators} accelerators on " + ", ".join(
        p.pool for p in option.parts
    )
    user_id = actor.pk if getattr(actor, "is_authenticated", False) else None
    spec_json = spec.to_json()
    hook = "booking.placed"
    request = booking_sql.Request(
        organization_id=org.pk,
        user_id=user_id,
        door=door,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        national_id=national_id,
        spec=spec_json,
        status=status,
        hold_seconds=hold_seconds,
        start=spec.start,
        end=spec.end,
        accelerators=option.accelerators,
        cost=option.cost,
        currency=option.currency,
        allocations=[
            (p.pool_id, p.accelerators, p.price_per_accelerator_hour) for p in option.parts
        ],
        message=message,
        data={"pools": [p.pool for p in option.parts], "replaces": ""},
        hook=hook,
        payload={
            "event": hook,
            "time": _now().isoformat(),
            "data": {"booking": national_id, "status": status, "message": message[:500]},
        },
    )
    try:
        booked = booking_sql.book(request)
    except booking_sql.Unsupported:
        return None
    if booked.existing:
        found = _existing(org, idempotency_key, fingerprint)
        assert found is not None
        return found
    booking = Booking(
        pk=booked.booking_id,
        national_id=national_id,
        organization=org,
        created_by_id=user_id,
        door=door,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        spec=spec_json,
        status=status,
        window_start=spec.start,
        window_end=spec.end,
        accelerators=option.accelerators,
        estimated_cost=option.cost,
        currency=option.currency,
        hold_expires_at=booked.hold_expires_at,
        created_at=booked.created_at,
        updated_at=booked.created_at,
    )
    booking._state.adding = False
    booking._state.db = "default"
    booking.booked_parts = list(option.parts)  # type: ignore[attr-defined]
    for delivery in booked.deliveries:
        enqueue_on_commit(WEBHOOK_DELIVER_TASK, delivery)
    if not held:
        _dispatch_on_commit(booking)
    return booking


@refusals_counted(
    [
        (QuotaExceeded, "quota"),
        (CapacityExhausted, "capacity"),
        (ValidationError, "invalid"),
        (ObjectDoesNotExist, "invalid"),
        (RetryableConflict, "conflict"),
        (IdempotencyKeyReused, "conflict"),
        (IntegrityError, "conflict"),
    ]
)
def booking_create(
    *,
    spec: WorkloadSpec,
    idempotency_key: str,
    actor: Actor,
    door: Door,
    option: Sequence[tuple[str, int]] | None = None,
    hold: bool = False,
) -> Booking:
    """Book ``spec`` (on the best placement, or on the client's chosen ``option``).

    With ``hold`` the booking is ``held``: its capacity is reserved for ``BROKER_HOLD_SECONDS``
    and it runs only once confirmed (:func:`booking_confirm`); unconfirmed, it lapses and its
    capacity comes back (:func:`bookings_expire_holds`).

    A repeated ``idempotency_key`` of the same firm returns the first booking when the request
    is the same (:func:`request_fingerprint`), and is refused with ``IdempotencyKeyReused``
    when it is not. Each attempt is a new transaction; when the chosen capacity was taken
    meanwhile, a booking from a specification is re-placed on fresh figures up to
    ``REPLACE_ATTEMPTS`` times. ``CapacityExhausted`` (naming the reason or quota) when nothing
    fits.

    On PostgreSQL the key is looked up by the booking statement itself (``INSERT ... ON
    CONFLICT``, :mod:`brokers.booking_sql`); a request refused before it gets there (a start
    now past, a pool gone, nothing fits) looks the key up then, so a retry of a booking that
    was made still answers with it.
    """
    org = _require_booker(actor)
    key = (idempotency_key or "").strip()
    if not 1 <= len(key) <= 100:
        raise ValidationError({"idempotency_key": ["Give a key of 1 to 100 characters."]})
    fingerprint = request_fingerprint(spec, option, hold)
    in_one_trip = booking_sql.available()
    if not in_one_trip:
        found = _existing(org, key, fingerprint)
        if found is not None:
            return found
    try:
        return _booking_create(
            org=org,
            spec=spec,
            key=key,
            actor=actor,
            door=door,
            option=option,
            hold=hold,
            in_one_trip=in_one_trip,
            fingerprint=fingerprint,
        )
    except (ValidationError, CapacityExhausted):
        if in_one_trip:
            found = _existing(org, key, fingerprint)
            if found is not None:
                return found
        raise


def _booking_create(
    *,
    org: Organization,
    spec: WorkloadSpec,
    key: str,
    actor: Actor,
    door: Door,
    option: Sequence[tuple[str, int]] | None,
    hold: bool,
    in_one_trip: bool,
    fingerprint: str,
) -> Booking:
    spec = spec.validated(now=_now())
    vocabulary.check_spec(spec)
    from brokers import market

    market.check_priority(org, spec)
    hold_seconds = float(getattr(settings, "BROKER_HOLD_SECONDS", 300)) if hold else None
    # Priced for the spec's class already (the price its cap was checked against).
    chosen = option_from_parts(spec=spec, parts=option, actor=actor) if option else None

    def book(option: PlacementOption) -> Booking:
        booked = None
        preempting = False
        # The one-round-trip function books reserved capacity as things are; spot and
        # priority bookings, and a reserved one that must preempt spot bookings, take the
        # Python path (brokers.market).
        if in_one_trip and spec.booking_class == BookingClassSlug.RESERVED:
            try:
                booked = _book_in_one_trip(
                    org=org,
                    actor=actor,
                    door=door,
                    spec=spec,
                    option=option,
                    idempotency_key=key,
                    hold_seconds=hold_seconds,
                    fingerprint=fingerprint,
                )
            except CapacityExhausted as exc:
                if exc.code != "booking.capacity_exceeded":
                    raise
                preempting = True
        if booked is None:

            def attempt(preempting: bool) -> Booking:
                return ledger.in_fresh_transactions(
                    lambda: _book_option(
                        org=org,
                        actor=actor,
                        door=door,
                        spec=spec,
                        option=option,
                        idempotency_key=key,
                        hold_seconds=hold_seconds,
                        fingerprint=fingerprint,
                        preempting=preempting,
                    )
                )

            try:
                booked = attempt(preempting)
            except market.NeedsPreemption:
                booked = attempt(True)
        BOOKINGS.labels(door=door).inc()
        return booked

    last_error: CapacityExhausted | None = None
    for _ in range(1 if chosen else REPLACE_ATTEMPTS):
        if chosen is not None:
            candidate = chosen
        else:
            result = _place(spec, organization_id=org.pk, explain=False, max_options=1)
            if not result.options:
                # Explain the refusal (the full count is paid only when nothing fits).
                result.prefiltered = explain_counts(spec)
                raise CapacityExhausted(_no_placement_detail(result), code="booking.no_placement")
            candidate = result.options[0]
        try:
            try:
                return book(candidate)
            except IntegrityError:
                # A concurrent request with the same key committed first: answer with its
                # booking. Otherwise the random booking id collided: once more, with a new id.
                found = _existing(org, key, fingerprint)
                if found is not None:
                    return found
                return book(candidate)
        except IntegrityError:
            found = _existing(org, key, fingerprint)
            if found is not None:
                return found
            raise
        except QuotaExceeded:
            raise
        except CapacityExhausted as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


def _no_placement_detail(result: PlacementResult) -> str:
    reasons: dict[str, int] = dict(result.prefiltered)
    for r in result.rejections:
        reasons[r.reason_code] = reasons.get(r.reason_code, 0) + 1
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(reasons.items()))
    return "No pool can take this workload" + (f" ({summary})." if summary else ".")


def _set_status(
    booking: Booking, *, allowed_from: AbstractSet[str], to: BookingStatus, reason: str = ""
) -> bool:
    """Compare-and-set of a booking's status; False if another writer moved it first."""
    updated = Booking.objects.filter(pk=booking.pk, status__in=allowed_from).update(
        status=to, status_reason=reason[:500], updated_at=_now()
    )
    if updated:
        booking.status = to
        booking.status_reason = reason[:500]
    return bool(updated)


def _release(booking: Booking) -> None:
    """Give back the booking's capacity from now on: the slot of this instant and the later
    ones. Earlier slots stay counted: they were used (or, never used, lie in the past, where no
    booking may go). Callers run it once per booking (a compare-and-set on the status)."""
    now = _now()
    if now >= booking.window_end:
        return
    parts = [Part(a.pool_id, a.accelerators) for a in booking.allocations.all()]
    ledger.release(
        parts,
        max(booking.window_start, now),
        booking.window_end,
        spot=booking.booking_class_id == BookingClassSlug.SPOT,
    )


def booking_cancel(*, booking: Booking, actor: Actor, door: Door, reason: str = "") -> Booking:
    """Cancel a booking and give its capacity back; cancelling a cancelled booking is a no-op.

    The status compare-and-set makes the release happen exactly once, whatever the number of
    concurrent cancels. Running workloads are stopped at their centers after commit.
    """
    with transaction.atomic():
        booking = Booking.objects.select_for_update().get(pk=booking.pk)
        if booking.status == BookingStatus.CANCELLED:
            return booking
        was = booking.status
        if not _set_status(
            booking,
            allowed_from=CANCELLABLE_STATUSES,
            to=BookingStatus.CANCELLED,
            reason=reason or f"cancelled by {actor}",
        ):
            raise ValidationError({"status": [f"A {booking.status} booking cannot be cancelled."]})
        _release(booking)
        _event(booking, EventKind.STATUS, booking.status_reason, {"door": door})
        # After the status event: its webhook carries the cancellation, not the withdrawal.
        _offers_close_for(booking)
        _holds_on_commit(booking)
        if was in (BookingStatus.DISPATCHING, BookingStatus.RUNNING) and getattr(
            settings, "BROKER_DISPATCH", True
        ):
            enqueue_on_commit(BOOKING_STOP_TASK, booking.pk)
    return booking


def booking_confirm(*, booking: Booking, actor: Actor, door: Door) -> Booking:
    """Confirm a held booking before its hold lapses (database time); it is then dispatched.

    Confirming a confirmed booking is a no-op; a lapsed hold is refused (``hold.expired``) and
    its capacity given back at once.
    """
    with transaction.atomic():
        confirmed = Booking.objects.filter(
            pk=booking.pk, status=BookingStatus.HELD, hold_expires_at__gt=Now()
        ).update(status=BookingStatus.CONFIRMED, status_reason="confirmed", updated_at=_now())
        booking.refresh_from_db()
        if confirmed:
            _event(booking, EventKind.STATUS, "confirmed", {"door": door})
            _dispatch_on_commit(booking)
            return booking
    if booking.status == BookingStatus.HELD:
        bookings_expire_holds()
        raise ValidationError({"status": ["The hold has expired (hold.expired); book again."]})
    if booking.status != BookingStatus.CONFIRMED and booking.status not in (
        BookingStatus.DISPATCHING,
        BookingStatus.RUNNING,
        BookingStatus.FINISHED,
    ):
        raise ValidationError({"status": [f"A {booking.status} booking cannot be confirmed."]})
    return booking


def bookings_expire_holds() -> int:
    """Cancel every hold whose time has passed (database time) and give its capacity back; the
    periodic sweep, also run when a lapsed hold is confirmed. Returns how many lapsed."""
    lapsed = 0
    for pk in Booking.objects.filter(
        status=BookingStatus.HELD, hold_expires_at__lte=Now()
    ).values_list("pk", flat=True):
        with transaction.atomic():
            booking = Booking.objects.select_for_update().get(pk=pk)
            # Compare-and-set: a concurrent confirm or sweep wins at most once.
            if _set_status(
                booking,
                allowed_from={BookingStatus.HELD},
                to=BookingStatus.CANCELLED,
                reason="the hold expired unconfirmed",
            ):
                _release(booking)
                _event(booking, EventKind.STATUS, booking.status_reason)
                lapsed += 1
    return lapsed


def booking_replace(*, booking: Booking, exclude_center: str, reason: str) -> Booking | None:
    """Move a booking that cannot run where it is to other capacity: same specification, that
    center excluded, new booking, old one ``replaced`` (its capacity given back) with an event
    naming the new one. Returns the new booking, or None (old one ``failed``) if nothing fits.
    """
    spec = WorkloadSpec.from_json(booking.spec)
    excluded = tuple(sorted({*spec.centers_excluded, exclude_center} - {""}))
    now = _now()
    # Keep the duration; start now if the original start has passed.
    start = max(spec.start, now)
    import dataclasses

    spec = dataclasses.replace(
        spec, centers_excluded=excluded, earliest_start=start, latest_end=None
    )
    result = _place(spec, organization_id=booking.organization_id, explain=False, max_options=1)

    def attempt() -> Booking | None:
        old = Booking.objects.select_for_update().get(pk=booking.pk)
        if old.status not in RESERVING_STATUSES:
            return old.replaced_by
        # A hold moves as a hold, with the expiry the firm was given: only a confirm (by the
        # firm) makes a booking that runs and is billed.
        hold_until = old.hold_expires_at if old.status == BookingStatus.HELD else None
        _release(old)
        if not result.options:
            _set_status(
                old, allowed_from=RESERVING_STATUSES, to=BookingStatus.FAILED, reason=reason
            )
            _event(old, EventKind.STATUS, f"{reason}; no other capacity fits")
            _offers_close_for(old)
            return None
        new = _book_option(
            org=old.organization,
            actor=old.created_by,
            door=Door(old.door),
            spec=spec,
            option=result.options[0],
            idempotency_key=f"{old.idempotency_key}~r{old.pk}"[:100],
            replaces=old,
            hold_until=hold_until,
        )
        _set_status(old, allowed_from=RESERVING_STATUSES, to=BookingStatus.REPLACED, reason=reason)
        Booking.objects.filter(pk=old.pk).update(replaced_by=new)
        _holds_on_commit(old)
        _event(
            old,
            EventKind.REPLACED,
            f"{reason}; moved to {new.national_id}",
            {"replaced_by": new.national_id, "excluded_center": exclude_center},
        )
        # Its open resale offers go with it (the new booking is not offered).
        _offers_close_for(old)
        return new

    try:
        return ledger.in_fresh_transactions(attempt)
    except CapacityExhausted:
        # The new capacity was taken meanwhile: fail the old booking rather than loop.
        def fail() -> None:
            old = Booking.objects.select_for_update().get(pk=booking.pk)
            if old.status in RESERVING_STATUSES:
                _release(old)
                _set_status(
                    old, allowed_from=RESERVING_STATUSES, to=BookingStatus.FAILED, reason=reason
                )
                _event(old, EventKind.STATUS, f"{reason}; no other capacity fits")

        ledger.in_fresh_transactions(fail)
        return None


def booking_record(
    *,
    booking: Booking,
    kind: EventKind,
    message: str,
    to: BookingStatus | None = None,
    allowed_from: AbstractSet[str] | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Record what dispatch learnt: an event, and a status move if ``to`` is given (compare-and-
    set from ``allowed_from``). Returns False if the status move lost to another writer.

    A move out of the reserving statuses (finished, failed, stopped) gives back the rest of the
    window (:func:`_release`), in the same transaction; a move back into them is refused (it
    would hold capacity the ledger never reserved).
    """
    with transaction.atomic():
        moved = True
        if to is not None and to != booking.status:
            # The row lock makes the status read here the one the compare-and-set moves from,
            # so the capacity is given back exactly once.
            was = (
                Booking.objects.select_for_update()
                .values_list("status", flat=True)
                .get(pk=booking.pk)
            )
            if was not in RESERVING_STATUSES and to in RESERVING_STATUSES:
                return False
            moved = _set_status(
                booking, allowed_from=allowed_from or {booking.status}, to=to, reason=message
            )
            if not moved:
                return False
            if was in RESERVING_STATUSES and to not in RESERVING_STATUSES:
                _release(booking)
        _event(booking, kind, message, data)
    return moved


def booking_dispatched(*, booking: Booking, workload_id: str) -> bool:
    """Whether the start of ``workload_id`` is already on the booking's record."""
    return BookingEvent.objects.filter(
        booking=booking, kind=EventKind.DISPATCHED, data__workload_id=workload_id
    ).exists()


def booking_flag_pool(*, pool_id: int, to_status: str, reason: str) -> list[Booking]:
    """A pool went degraded/offline: flag its bookings that have not ended, with an event.

    Bookings on an ``offline`` pool that have not started running are re-placed by a task.
    """
    now = _now()
    flagged = list(
        Booking.objects.filter(
            status__in=RESERVING_STATUSES, window_end__gt=now, allocations__pool_id=pool_id
        ).distinct()
    )
    pool = Pool.objects.select_related("center").get(pk=pool_id)
    message = f"pool {pool.national_id} is {to_status}: {reason}"[:500]
    for booking in flagged:
        with transaction.atomic():
            Booking.objects.filter(pk=booking.pk).update(flagged_reason=message)
            _event(booking, EventKind.FLAGGED, message, {"pool": pool.national_id})
            if (
                to_status == Status.OFFLINE
                and booking.status in (BookingStatus.CONFIRMED, BookingStatus.HELD)
                and getattr(settings, "BROKER_DISPATCH", True)
            ):
                enqueue_on_commit(BOOKING_REPLACE_TASK, booking.pk, pool.center.national_id)
    return flagged


def usage_record(
    *,
    allocation: Allocation,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    accelerator_hours: float | None = None,
) -> UsageRecord:
    """Record what an allocation really used (idempotent: once per allocation):
    ``accelerator_hours`` as the center's accounting measured them (Slurm's sacct) when the
    agent reports them, else the run's length times the allocation's accelerators."""
    if accelerator_hours is not None and accelerator_hours > 0:
        accel_hours = Decimal(str(accelerator_hours)).quantize(Decimal("0.0001"))
    else:
        hours = Decimal(max(0.0, (finished_at - started_at).total_seconds()) / 3600)
        accel_hours = (hours * allocation.accelerators).quantize(Decimal("0.0001"))
    price = allocation.price_per_accelerator_hour or Decimal(0)
    record, _ = UsageRecord.objects.get_or_create(
        allocation=allocation,
        defaults={
            "organization_id": allocation.booking.organization_id,
            "started_at": started_at,
            "finished_at": finished_at,
            "accelerator_hours": accel_hours,
            "cost": (accel_hours * price).quantize(Decimal("0.01")),
            "currency": allocation.booking.currency,
        },
    )
    return record


@transaction.atomic
def quota_set(
    *,
    organization: Organization,
    actor: Actor,
    door: Door,
    max_concurrent_accelerators: int | None,
    max_accelerator_hours_per_month: int | None,
) -> Quota:
    """Set an AI firm's quota (platform staff only), with a change record (before and after)."""
    if not registry_selectors.is_platform_staff(actor):
        raise PermissionDenied("Only platform staff set quotas.")
    existing = Quota.objects.select_for_update().filter(organization=organization).first()
    before = registry_services.snapshot(existing) if existing else None
    quota, created = Quota.objects.update_or_create(
        organization=organization,
        defaults={
            "max_concurrent_accelerators": max_concurrent_accelerators,
            "max_accelerator_hours_per_month": max_accelerator_hours_per_month,
        },
    )
    registry_services.change_record(
        obj=quota,
        action=ChangeAction.CREATE if created else ChangeAction.UPDATE,
        actor=actor,
        door=door,
        before=before,
        after=registry_services.snapshot(quota),
    )
    return quota


def pool_capacity_sync(*, pool_id: int, capacity: int) -> None:
    """Keep the slot counters of a pool in step with its size; a reduction below what is
    reserved from the current slot on violates the slots' CHECK and is refused with a field
    message. Past slots take the new size too, but never below what they hold (that was booked
    when the pool was larger): a stale, larger capacity there would let a booking reaching into
    the past oversell them."""
    now_slot = connection.ops.adapt_datetimefield_value(ledger.slot_bounds(_now(), _now())[0])
    past = "CASE WHEN reserved > %s THEN reserved ELSE %s END"
    try:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(
                    "UPDATE brokers_poolslot SET capacity = %s "
                    "WHERE pool_id = %s AND slot_start >= %s AND capacity <> %s",
                    [capacity, pool_id, now_slot, capacity],
                )
                cur.execute(
                    f"UPDATE brokers_poolslot SET capacity = {past} "
                    f"WHERE pool_id = %s AND slot_start < %s AND capacity <> {past}",
                    [capacity, capacity, pool_id, now_slot, capacity, capacity],
                )
    except IntegrityError:
        peak = (
            Booking.objects.filter(
                status__in=RESERVING_STATUSES, allocations__pool_id=pool_id, window_end__gt=_now()
            ).aggregate(n=Sum("allocations__accelerators"))["n"]
            or 0
        )
        raise ValidationError(
            {
                "nodes": [
                    f"The pool cannot shrink to {capacity} accelerators: up to {peak} are "
                    "booked in future windows (pool.in_use)."
                ]
            }
        ) from None
