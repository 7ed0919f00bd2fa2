"""Reads of the broker that carry a rule; booking tenancy is decided here and nowhere else.

An AI firm sees its own bookings; an operator sees the bookings that hold its pools (without the
customer's specification: the doors hide it, see :func:`may_see_spec`); platform staff see all.
A booking outside the result is "not found" at every door.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Count, Exists, OuterRef, QuerySet, Sum
from django.db.models.functions import TruncMonth

from brokers.models import Allocation, Booking, BookingEvent, UsageRecord
from registry import selectors as registry_selectors
from registry.actors import Actor
from registry.choices import OrgKind


def bookings_visible_to(user: Actor) -> QuerySet[Booking]:
    """Bookings the user may read (see the module docstring)."""
    qs = Booking.objects.select_related("organization", "created_by")
    if registry_selectors.is_platform_staff(user):
        return qs
    org = registry_selectors.organization_of(user)
    if org is None:
        return qs.none()
    if org.kind == OrgKind.OPERATOR:
        on_my_pools = Allocation.objects.filter(booking=OuterRef("pk"), pool__center__operator=org)
        return qs.filter(Exists(on_my_pools))
    return qs.filter(organization=org)


def bookings_cancellable_by(user: Actor) -> QuerySet[Booking]:
    """Only the booking firm (and platform staff) may cancel."""
    qs = Booking.objects.select_related("organization")
    if registry_selectors.is_platform_staff(user):
        return qs
    org = registry_selectors.organization_of(user)
    return qs.filter(organization=org) if org else qs.none()


def may_see_spec(user: Actor | None, booking: Booking) -> bool:
    """The workload specification belongs to the firm (and the platform), not the operator."""
    if registry_selectors.is_platform_staff(user):
        return True
    return registry_selectors.organization_of(user) == booking.organization


def booking_events_after(*, booking: Booking, after_id: int = 0) -> list[BookingEvent]:
    """Events of a booking newer than ``after_id``, oldest first (WatchBooking's poll)."""
    return list(BookingEvent.objects.filter(booking=booking, id__gt=after_id).order_by("id"))


def usage_by_month(*, organization_id: int) -> list[dict[str, Any]]:
    """Accelerator-hours and cost of an organization's finished work, per calendar month (UTC)."""
    rows = (
        UsageRecord.objects.filter(organization_id=organization_id)
        .annotate(month=TruncMonth("started_at", tzinfo=dt.UTC))
        .values("month", "currency")
        .annotate(hours=Sum("accelerator_hours"), cost=Sum("cost"))
        .order_by("month", "currency")
    )
    return [
        {
            "month": row["month"].strftime("%Y-%m"),
            "currency": row["currency"],
            "accelerator_hours": row["hours"] or Decimal(0),
            "cost": row["cost"] or Decimal(0),
        }
        for row in rows
    ]


def demand_flows() -> list[dict[str, Any]]:
    """Where demand comes from and where it is served: accelerator-hours of bookings that hold or
    held capacity, by the hub holding the workload's data (``spec.data_hub``, "" when not said)
    and the hub of the pool serving it. One grouped query over allocations."""
    from django.db.models import DurationField, ExpressionWrapper, F
    from django.db.models.fields.json import KeyTextTransform

    from brokers.choices import RESERVING_STATUSES, BookingStatus

    served = [*sorted(RESERVING_STATUSES), BookingStatus.FINISHED]
    # Grouped by the allocation's size too, so the database only sums durations (SQLite cannot
    # multiply an interval); accelerators x hours is done per group below.
    rows = (
        Allocation.objects.filter(booking__status__in=served)
        .annotate(origin=KeyTextTransform("data_hub", "booking__spec"))
        .values("origin", "pool__center__cluster__hub__code", "accelerators")
        .annotate(
            n=Count("id"),
            length=Sum(ExpressionWrapper(F("end") - F("start"), output_field=DurationField())),
        )
        .order_by()
    )
    flows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["origin"] or "", row["pool__center__cluster__hub__code"])
        flow = flows.setdefault(
            key, {"origin": key[0], "served": key[1], "allocations": 0, "accelerator_hours": 0.0}
        )
        flow["allocations"] += row["n"]
        if row["length"]:
            flow["accelerator_hours"] += row["accelerators"] * row["length"].total_seconds() / 3600
    for flow in flows.values():
        flow["accelerator_hours"] = round(flow["accelerator_hours"], 1)
    return sorted(flows.values(), key=lambda r: -r["accelerator_hours"])
