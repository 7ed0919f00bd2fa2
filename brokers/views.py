"""Portal pages of the broker: free capacity, placement preview, booking, "my bookings" with live
status, cancel, accelerator-hours used; and the national dashboard, which composes the
registry's, verification's and the broker's figures (this app is the highest in the dependency
order, so it may read all three).

Doors only: placement, booking and cancelling are ``brokers.services``; who sees which booking
is ``brokers.selectors``.
"""

import datetime as dt
import json
import logging
import threading
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from brokers import market, selectors, services
from brokers.choices import CANCELLABLE_STATUSES, FINAL_STATUSES, BookingStatus
from brokers.errors import CapacityExhausted, IdempotencyKeyReused, RetryableConflict
from brokers.forms import BookingForm, CancelForm, OfferForm, WindowForm, WorkloadForm
from brokers.ledger import DeadlineExceeded
from brokers.models import ResaleOffer
from brokers.placement import WorkloadSpec, catalog
from brokers.placement.spec import spot_price
from registry import charts
from registry import selectors as registry_selectors
from registry import views as registry_views
from registry.choices import Door, OrgKind
from registry.errors import portal_error
from registry.forms import apply_service_errors
from verification import selectors as verification_selectors

logger = logging.getLogger(__name__)

# Portal colours of booking statuses (the badge classes of templates/base.html).
BOOKING_COLORS = {
    BookingStatus.HELD: "gray",
    BookingStatus.CONFIRMED: "blue",
    BookingStatus.DISPATCHING: "indigo",
    BookingStatus.RUNNING: "green",
    BookingStatus.FINISHED: "black",
    BookingStatus.CANCELLED: "gray",
    BookingStatus.FAILED: "red",
    BookingStatus.REPLACED: "purple",
    BookingStatus.PREEMPTED: "orange",
    BookingStatus.SOLD: "black",
}
# The dashboard's national aggregates over heartbeats and bookings scan large tables (about a
# second at a million bookings). They are shared by every visitor: kept in the cache for an hour
# and refreshed ahead, in a background thread, once they are a minute old, so no visitor waits
# for them except the first one after a start (the capacity figures above them stay live).
ACTIVITY_KEY = "portal:national-activity"
ACTIVITY_FRESH_SECONDS = 60
ACTIVITY_KEEP_SECONDS = 3600


def _status(booking: Any) -> dict[str, str]:
    return {
        "status": booking.status,
        "label": BookingStatus(booking.status).label,
        "color": BOOKING_COLORS.get(booking.status, "gray"),
        "final": booking.status in FINAL_STATUSES,
    }


# --- National dashboard -----------------------------------------------------------------------


def _compute_activity() -> dict[str, Any]:
    return {
        "utilization": verification_selectors.national_utilization(hours=24),
        "flows": selectors.demand_flows(),
        "computed_at": timezone.now(),
    }


def _refresh_activity() -> None:
    try:
        cache.set(ACTIVITY_KEY, _compute_activity(), ACTIVITY_KEEP_SECONDS)
    except Exception:
        logger.exception("refreshing the national activity figures failed")
    finally:
        cache.delete(f"{ACTIVITY_KEY}:refreshing")
        # This thread's own database connection; the request's is untouched.
        connections.close_all()


def national_activity() -> dict[str, Any]:
    """Utilization over the last day and demand flows, at most a minute stale (see above)."""
    entry: dict[str, Any] | None = cache.get(ACTIVITY_KEY)
    if entry is None:
        entry = _compute_activity()
        cache.set(ACTIVITY_KEY, entry, ACTIVITY_KEEP_SECONDS)
        return entry
    age = (timezone.now() - entry["computed_at"]).total_seconds()
    # cache.add is atomic: one refresher at a time (per cache: all processes with a shared one).
    if age > ACTIVITY_FRESH_SECONDS and cache.add(f"{ACTIVITY_KEY}:refreshing", 1, 300):
        threading.Thread(target=_refresh_activity, name="activity-refresh", daemon=True).start()
    return entry


def dashboard(request: HttpRequest) -> HttpResponse:
    """The national dashboard (public): the registry's capacity, verification's utilization over
    time, and the broker's demand flows (data hub -> serving hub)."""
    context = registry_views.dashboard_context(request)
    activity = national_activity()
    context["utilization_chart"] = charts.line_chart(
        [(row["hour"], row["utilization"] * 100) for row in activity["utilization"]],
        y_max=100,
        unit=" %",
    )
    flows = activity["flows"]
    context["map"]["flows"] = charts.flow_arcs(hubs=context["map"]["hubs"], flows=flows)
    hub_names = {h["code"]: h["name"] for h in context["map"]["hubs"]}
    for flow in flows:
        flow["origin_name"] = hub_names.get(flow["origin"], "not said")
        flow["served_name"] = hub_names.get(flow["served"], flow["served"])
    regions = {h["code"]: h["region"] for h in context["map"]["hubs"]}
    east_to_west = sum(
        f["accelerator_hours"]
        for f in flows
        if regions.get(f["origin"]) == "east" and regions.get(f["served"]) == "west"
    )
    total = sum(f["accelerator_hours"] for f in flows)
    context.update(
        {
            "flows": flows[:12],
            "flows_total": total,
            "east_to_west_share": east_to_west / total if total else None,
            "activity_at": activity["computed_at"],
        }
    )
    return render(request, "brokers/dashboard.html", context)


# --- Capacity search --------------------------------------------------------------------------


def capacity_search(request: HttpRequest) -> HttpResponse:
    """The registry's capacity search, with the accelerators free over a time window next to
    each pool of the page.

    The free figure is the capacity listing's (``catalog.fresh_free``, what
    ``catalog.capacity_page`` reads for ``/api/v1/capacity/`` and ``QueryCapacity``): the pool's
    size less its most reserved slot, for a pool that can be booked; a pool that cannot (not
    active, or its center not active) shows none. The rows are not the listing's: this page
    searches the registry (every status the caller may see, A100-equivalents, origin, traits),
    where the listing answers "which bookable pools have this much free" (only bookable pools,
    only those with enough free, by page token). ``tests/brokers/test_capacity_oracle.py``
    checks both against one oracle."""
    context = registry_views.capacity_search_context(request)
    window = WindowForm(request.GET)
    start, hours = timezone.now(), 1.0
    if window.is_valid():
        start = window.cleaned_data["start"] or start
        hours = window.cleaned_data["hours"] or hours
    end = start + dt.timedelta(hours=hours)
    rows = list(context["page"].object_list)
    free = catalog.fresh_free(start, end, [p.pk for p in rows]) if rows else {}
    for pool in rows:
        pool.free = free.get(pool.pk)
        pool.spot_price = spot_price(pool.price_per_accelerator_hour, pool.spot_discount_percent)
    context["page"].object_list = rows
    context.update(
        {"window": window, "window_start": start, "window_end": end, "can_book": _booker(request)}
    )
    return render(request, "registry/capacity_search.html", context)


# --- Placement and booking --------------------------------------------------------------------


def _booker(request: HttpRequest) -> bool:
    org = registry_selectors.organization_of(request.user)
    return org is not None and org.kind in (OrgKind.AI_FIRM, OrgKind.PLATFORM)


@login_required
def placement(request: HttpRequest) -> HttpResponse:
    """A workload form and, once filled, its ranked placement options with every rejection
    explained; each option can be booked as previewed."""
    form = WorkloadForm(request.GET if "preview" in request.GET else None)
    result = None
    spec_json = ""
    if form.is_bound and form.is_valid():
        try:
            result = services.placement_preview(spec=form.to_spec(), actor=request.user)
        except ValidationError as exc:
            if hasattr(exc, "error_dict") and "duration" in exc.error_dict:
                exc.error_dict["duration_hours"] = exc.error_dict.pop("duration")
            apply_service_errors(form, exc)
        else:
            # The start as asked: an empty one stays "now" when the option is booked later.
            spec_json = json.dumps(
                {
                    **result.spec.to_json(),
                    "earliest_start": form.to_spec().to_json()["earliest_start"],
                }
            )
    return render(
        request,
        "brokers/placement.html",
        {
            "form": form,
            "result": result,
            "spec_json": spec_json,
            "idempotency_key": uuid.uuid4().hex,
            "can_book": _booker(request),
            "back": request.get_full_path(),
        },
    )


@login_required
@require_POST
def booking_create(request: HttpRequest) -> HttpResponse:
    """Book one previewed option. The idempotency key was made when the preview was shown, so
    a double click or a resubmitted form books once."""
    if not _booker(request):
        raise PermissionDenied("Only AI firms book capacity.")
    form = BookingForm(request.POST)
    back = request.POST.get("back", "")
    # Only ever send the user back to a placement preview of this site.
    back = back if back.startswith("/placement/") else "/placement/"
    if not form.is_valid():
        messages.error(request, "The booking form was incomplete; preview again.")
        return redirect(back)
    try:
        booking = services.booking_create(
            spec=WorkloadSpec.from_json(form.cleaned_data["spec"]),
            option=form.cleaned_data["option"],
            idempotency_key=form.cleaned_data["idempotency_key"],
            actor=request.user,
            door=Door.PORTAL,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except (CapacityExhausted, IdempotencyKeyReused, RetryableConflict, DeadlineExceeded) as exc:
        messages.error(request, portal_error(exc, "Not booked"))
    else:
        messages.success(request, f"Booked {booking.national_id}.")
        return redirect("booking-detail", national_id=booking.national_id)
    return redirect(back)


@login_required
def booking_list(request: HttpRequest) -> HttpResponse:
    """The firm's bookings (an operator: bookings on its pools) with live status, and the
    accelerator-hours its finished work used per month."""
    qs = selectors.bookings_visible_to(request.user).prefetch_related("allocations__pool")
    status = request.GET.get("status", "")
    if status in BookingStatus.values:
        qs = qs.filter(status=status)
    # Newest first by id: the primary key's index serves it (no sort of a million rows), and
    # the list is not counted (a count over every booking costs more than the page).
    page = registry_views.paginate_uncounted(request, qs.order_by("-id"))
    org = registry_selectors.organization_of(request.user)
    usage = selectors.usage_by_month(organization_id=org.pk) if org else []
    for booking in page.object_list:
        booking.badge = _status(booking)
        booking.hours = (booking.window_end - booking.window_start).total_seconds() / 3600
        booking.accelerator_hours = booking.hours * booking.accelerators
    return render(
        request,
        "brokers/booking_list.html",
        {
            "page": page,
            "usage": usage,
            "statuses": BookingStatus.choices,
            "status": status,
            "is_firm": _booker(request),
            "live_ids": ",".join(
                b.national_id for b in page.object_list if b.status not in FINAL_STATUSES
            ),
        },
    )


@login_required
def booking_detail(request: HttpRequest, national_id: str) -> HttpResponse:
    booking = get_object_or_404(
        selectors.bookings_visible_to(request.user), national_id=national_id
    )
    return _booking_page(request, booking)


def _booking_page(
    request: HttpRequest, booking: Any, *, offer_form: OfferForm | None = None
) -> HttpResponse:
    """The booking page; ``offer_form`` a refused offer (shown with its field messages and the
    input kept)."""
    events = selectors.booking_events_after(booking=booking)
    cancellable = (
        booking.status in CANCELLABLE_STATUSES
        and selectors.bookings_cancellable_by(request.user).filter(pk=booking.pk).exists()
    )
    return render(
        request,
        "brokers/booking_detail.html",
        {
            "booking": booking,
            "badge": _status(booking),
            "allocations": booking.allocations.select_related("pool__center__cluster__hub"),
            "events": events,
            "last_event": events[-1].pk if events else 0,
            "spec": (
                workload_rows(booking.spec)
                if selectors.may_see_spec(request.user, booking)
                else None
            ),
            "cancellable": cancellable,
            "cancel_form": CancelForm(),
            "offerable": cancellable
            and booking.status == BookingStatus.CONFIRMED
            and booking.booking_class_id == "reserved"
            and booking.window_start > timezone.now(),
            "offer_form": offer_form or OfferForm(),
            "offers": [
                market.offer_view(o, request.user)
                for o in market.offers_visible_to(request.user).filter(booking=booking)
            ]
            if cancellable or registry_selectors.is_platform_staff(request.user)
            else [],
            "hours": (booking.window_end - booking.window_start).total_seconds() / 3600,
        },
    )


# The workload specification's fields as the booking page names them, in this order.
WORKLOAD_LABELS = {
    "accelerator_model": "Accelerator model",
    "count": "Accelerators",
    "a100_equivalents": "A100-equivalents",
    "gang_size": "Gang size",
    "min_accelerators_per_node": "Accelerators per node, at least",
    "interconnect": "Interconnect",
    "traits": "Traits required",
    "memory_gb_per_accelerator": "Memory per accelerator (GB), at least",
    "earliest_start": "Earliest start",
    "latest_end": "Latest end",
    "duration": "Duration",
    "hubs_allowed": "Hubs allowed",
    "hubs_excluded": "Hubs excluded",
    "centers_excluded": "Centers excluded",
    "data_hub": "Data in hub",
    "data_gb": "Data size (GB)",
    "latency_class": "Latency class",
    "price_cap": "Price cap / accelerator-hour",
    "allow_split": "May split across centers",
    "max_centers": "Centers, at most",
    "image": "Image",
    "command": "Command",
}
# Values that only repeat a default are left out of the panel.
WORKLOAD_DEFAULTS = {"gang_size": 1, "max_centers": 1, "allow_split": False}


def _hours(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def workload_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The stored specification as (label, value) rows a person reads: times in UTC, the
    duration in hours, lists joined, defaults and empty values left out."""
    rows = []
    for key, label in WORKLOAD_LABELS.items():
        value = spec.get(key)
        if value in (None, "", [], 0, 0.0) or WORKLOAD_DEFAULTS.get(key, object()) == value:
            continue
        if key in ("earliest_start", "latest_end"):
            try:
                moment = dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC)
            except ValueError:
                text = str(value)
            else:
                text = f"{moment:%Y-%m-%d %H:%M} UTC"
        elif key == "duration":
            text = _hours(float(str(value)))
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        rows.append((label, text))
    return rows


@login_required
def booking_events(request: HttpRequest, national_id: str) -> JsonResponse:
    """The booking's status and its events after ``?after=<id>``: what the page polls."""
    booking = get_object_or_404(
        selectors.bookings_visible_to(request.user), national_id=national_id
    )
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        after = 0
    events = selectors.booking_events_after(booking=booking, after_id=after)
    return JsonResponse(
        {
            **_status(booking),
            # The Workload column follows the events (running, succeeded...).
            "allocations": [
                {
                    "pool": pool,
                    "workload_state": state or "",
                    "workload_id": workload_id or "",
                }
                for pool, state, workload_id in booking.allocations.order_by("pk").values_list(
                    "pool__national_id", "workload_state", "workload_id"
                )
            ],
            "events": [
                {
                    "id": e.pk,
                    "time": e.time.strftime("%Y-%m-%d %H:%M:%S"),
                    "kind": e.get_kind_display(),
                    "status": e.status,
                    "message": e.message,
                }
                for e in events
            ],
        }
    )


@login_required
def booking_statuses(request: HttpRequest) -> JsonResponse:
    """Statuses of up to 100 of the user's bookings (``?ids=BK-...,BK-...``) for the list's poll."""
    ids = [i for i in request.GET.get("ids", "").split(",") if i][:100]
    rows = selectors.bookings_visible_to(request.user).filter(national_id__in=ids)
    return JsonResponse({b.national_id: _status(b) for b in rows})


@login_required
@require_POST
def booking_cancel(request: HttpRequest, national_id: str) -> HttpResponse:
    booking = get_object_or_404(
        selectors.bookings_cancellable_by(request.user), national_id=national_id
    )
    form = CancelForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        services.booking_cancel(
            booking=booking, actor=request.user, door=Door.PORTAL, reason=reason
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{booking.national_id} cancelled; its capacity is free again.")
    return redirect("booking-detail", national_id=booking.national_id)


# --- Resale -----------------------------------------------------------------------------------


@login_required
@require_POST
def booking_offer(request: HttpRequest, national_id: str) -> HttpResponse:
    """Offer a booking of the firm (or its part from a slot boundary) for resale."""
    booking = get_object_or_404(
        selectors.bookings_cancellable_by(request.user), national_id=national_id
    )
    form = OfferForm(request.POST)
    if not form.is_valid():
        return _booking_page(request, booking, offer_form=form)
    start = form.cleaned_data["start"]
    if start is not None and timezone.is_naive(start):
        start = start.replace(tzinfo=dt.UTC)
    try:
        offer = market.offer_create(
            booking=booking,
            actor=request.user,
            door=Door.PORTAL,
            price=form.cleaned_data["price"],
            start=start,
        )
    except ValidationError as exc:
        # The service's refusal lands on its field (``start``, ``price``) or on the form.
        apply_service_errors(form, exc)
        return _booking_page(request, booking, offer_form=form)
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Offered as {offer.national_id} until the booking starts.")
    return redirect("booking-detail", national_id=booking.national_id)


@login_required
def offer_list(request: HttpRequest) -> HttpResponse:
    """Open resale offers of other firms (buy one), and the firm's own offers and purchases."""
    offers = [
        market.offer_view(o, request.user)
        for o in market.offers_visible_to(request.user).order_by("-id")[:200]
    ]
    return render(request, "brokers/offers.html", {"offers": offers, "can_book": _booker(request)})


def _offer(request: HttpRequest, national_id: str) -> ResaleOffer:
    return get_object_or_404(market.offers_visible_to(request.user), national_id=national_id)


@login_required
@require_POST
def offer_buy(request: HttpRequest, national_id: str) -> HttpResponse:
    """Buy a resale offer: the booking becomes the firm's (one buyer wins)."""
    offer = _offer(request, national_id)
    try:
        booking = market.offer_buy(offer=offer, actor=request.user, door=Door.PORTAL)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except (CapacityExhausted, PermissionDenied, RetryableConflict, DeadlineExceeded) as exc:
        # The catalog says whether buying again is safe (a busy ledger, a passed deadline).
        messages.error(request, portal_error(exc, "Not bought"))
    else:
        messages.success(request, f"Bought {offer.national_id}: booking {booking.national_id}.")
        return redirect("booking-detail", national_id=booking.national_id)
    return redirect("offer-list")


@login_required
@require_POST
def offer_withdraw(request: HttpRequest, national_id: str) -> HttpResponse:
    offer = get_object_or_404(market.offers_withdrawable_by(request.user), national_id=national_id)
    try:
        market.offer_withdraw(offer=offer, actor=request.user, door=Door.PORTAL)
    except ResaleOffer.DoesNotExist:
        raise Http404("No such offer.") from None
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
    else:
        messages.success(request, f"{offer.national_id} withdrawn.")
    return redirect("offer-list")
