"""Protobuf <-> domain conversions of the broker: protobuf stops here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from google.protobuf.timestamp_pb2 import Timestamp

from brokers import limits
from brokers.choices import BookingClassSlug, BookingStatus, LatencyClass
from brokers.models import Booking, BookingEvent
from brokers.placement import PlacementResult, WorkloadSpec
from brokers.placement.spec import OptionPart, check_start
from brokers.services import CapacityRow
from protos import broker_pb2 as pb

LATENCY_FROM_PB = {
    pb.LATENCY_CLASS_UNSPECIFIED: LatencyClass.TRAINING,
    pb.LATENCY_CLASS_INTERACTIVE: LatencyClass.INTERACTIVE,
    pb.LATENCY_CLASS_TRAINING: LatencyClass.TRAINING,
    pb.LATENCY_CLASS_BATCH: LatencyClass.BATCH,
}
STATUS_TO_PB: dict[str, pb.BookingStatus] = {
    BookingStatus.HELD: pb.BOOKING_STATUS_HELD,
    BookingStatus.CONFIRMED: pb.BOOKING_STATUS_CONFIRMED,
    BookingStatus.DISPATCHING: pb.BOOKING_STATUS_DISPATCHING,
    BookingStatus.RUNNING: pb.BOOKING_STATUS_RUNNING,
    BookingStatus.FINISHED: pb.BOOKING_STATUS_FINISHED,
    BookingStatus.CANCELLED: pb.BOOKING_STATUS_CANCELLED,
    BookingStatus.FAILED: pb.BOOKING_STATUS_FAILED,
    BookingStatus.REPLACED: pb.BOOKING_STATUS_REPLACED,
    BookingStatus.PREEMPTED: pb.BOOKING_STATUS_PREEMPTED,
    BookingStatus.SOLD: pb.BOOKING_STATUS_SOLD,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}


def ts(moment: dt.datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_ts(stamp: Timestamp, has: bool) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if has else None


def decimal_from_pb(value: str, field: str) -> Decimal | None:
    if not value:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValidationError({field: ["A decimal number, e.g. 12.50."]}) from None
    if not number.is_finite():  # NaN and Infinity parse, but compare only by raising
        raise ValidationError({field: ["A finite decimal number, e.g. 12.50."]})
    return number


def _str(value: Decimal | None) -> str:
    return "" if value is None else str(value)


def spec_from_pb(msg: pb.WorkloadSpec) -> WorkloadSpec:
    """The domain WorkloadSpec of a proto one (domain validation happens in the service; this
    refuses what cannot even be represented: out-of-range numbers, NUL characters; and a start
    in the past, with the service's own message)."""
    if msg.latency_class not in LATENCY_FROM_PB:
        raise ValidationError({"latency_class": ["Unknown latency class."]})
    # 0 is proto3's "not set": the default hour. Anything else is held to the service's limits.
    if msg.duration_seconds and (error := limits.duration_error(msg.duration_seconds)):
        raise ValidationError({"duration_seconds": [error]})
    for name in (
        "accelerator_model",
        "interconnect",
        "data_hub",
        "image",
        "command",
        "price_cap",
        "booking_class",
    ):
        if "\x00" in getattr(msg, name):
            raise ValidationError({name: ["NUL characters are not allowed."]})
    try:
        spec = _spec(msg)
    except (OverflowError, ValueError) as exc:  # e.g. a timestamp past year 9999
        raise ValidationError({"spec": [f"A value is out of range: {exc}"]}) from None
    check_start(spec.earliest_start)
    return spec


def _spec(msg: pb.WorkloadSpec) -> WorkloadSpec:
    return WorkloadSpec(
        accelerator_model=msg.accelerator_model,
        count=msg.count,
        a100_equivalents=msg.a100_equivalents,
        gang_size=msg.gang_size or 1,
        min_accelerators_per_node=msg.min_accelerators_per_node,
        interconnect=msg.interconnect,
        traits=tuple(msg.traits),
        memory_gb_per_accelerator=msg.memory_gb_per_accelerator,
        earliest_start=from_ts(msg.earliest_start, msg.HasField("earliest_start")),
        latest_end=from_ts(msg.latest_end, msg.HasField("latest_end")),
        duration=dt.timedelta(seconds=msg.duration_seconds or limits.DEFAULT_DURATION_SECONDS),
        hubs_allowed=tuple(msg.hubs_allowed),
        hubs_excluded=tuple(msg.hubs_excluded),
        centers_excluded=tuple(msg.centers_excluded),
        data_hub=msg.data_hub,
        data_gb=msg.data_gb,
        latency_class=LATENCY_FROM_PB[msg.latency_class],
        price_cap=decimal_from_pb(msg.price_cap, "price_cap"),
        allow_split=msg.allow_split,
        max_centers=msg.max_centers or 1,
        image=msg.image,
        command=msg.command,
        booking_class=msg.booking_class or BookingClassSlug.RESERVED,
        replace_on_preemption=msg.replace_on_preemption,
    )


def offer_to_pb(view: dict[str, Any]) -> pb.Offer:
    """An offer as ``brokers.market.offer_view`` shows it to the caller."""
    return pb.Offer(
        offer_id=view["offer_id"],
        status=view["status"],
        start=ts(view["start"]),
        end=ts(view["end"]),
        accelerators=view["accelerators"],
        price=str(view["price"]),
        currency=view["currency"],
        expires_at=ts(view["expires_at"]),
        parts=[
            pb.OptionChoice(pool=p["pool"], accelerators=p["accelerators"]) for p in view["parts"]
        ],
        booking_id=view["booking_id"],
        bought_booking_id=view["bought_booking_id"],
        mine=view["mine"],
    )


def capacity_to_pb(
    rows: list[CapacityRow], next_token: str, offers: Sequence[dict[str, Any]] = ()
) -> pb.QueryCapacityResponse:
    return pb.QueryCapacityResponse(
        entries=[
            pb.CapacityEntry(
                pool=r.pool,
                center=r.center,
                hub=r.hub,
                cluster=r.cluster,
                accelerator_model=r.accelerator,
                accelerators=r.accelerators,
                free=r.free,
                price_per_accelerator_hour=_str(r.price_per_accelerator_hour),
                currency=r.currency,
                intra_node_interconnect=r.intra_node_interconnect,
                inter_node_interconnect=r.inter_node_interconnect,
                green_power_share=r.green_power_share,
                a100_equivalent_per_accelerator=r.a100_equivalent_per_accelerator,
                spot_price_per_accelerator_hour=_str(r.spot_price_per_accelerator_hour),
            )
            for r in rows
        ],
        next_page_token=next_token,
        offers=[offer_to_pb(o) for o in offers],
    )


def placement_to_pb(result: PlacementResult) -> pb.PlaceResponse:
    return pb.PlaceResponse(
        options=[
            pb.PlacementOption(
                parts=[
                    pb.OptionPart(
                        pool=p.pool,
                        center=p.center,
                        hub=p.hub,
                        accelerator_model=p.accelerator,
                        accelerators=p.accelerators,
                        price_per_accelerator_hour=_str(p.price_per_accelerator_hour),
                        currency=p.currency,
                    )
                    for p in o.parts
                ],
                score=o.score,
                cost=str(o.cost),
                currency=o.currency,
                transfer_seconds=o.transfer_seconds,
                green_power_share=o.green_power_share,
                explanation=o.explanation,
                preemptions=[
                    pb.Preemption(pool=x.pool, bookings=x.bookings, accelerators=x.accelerators)
                    for x in o.preemptions
                ],
                offer=o.offer,
            )
            for o in result.options
        ],
        rejections=[
            pb.Rejection(pool=r.pool, reason_code=r.reason_code, detail=r.detail)
            for r in result.rejections
        ],
        prefiltered=result.prefiltered,
        candidates_considered=result.candidates_considered,
    )


def booking_to_pb(booking: Booking) -> pb.Booking:
    """A booking with its allocations (prefetch ``allocations__pool__center``)."""
    return pb.Booking(
        booking_id=booking.national_id,
        organization=booking.organization.slug,
        status=STATUS_TO_PB[booking.status],
        status_reason=booking.status_reason,
        window_start=ts(booking.window_start),
        window_end=ts(booking.window_end),
        accelerators=booking.accelerators,
        estimated_cost=str(booking.estimated_cost),
        currency=booking.currency,
        flagged_reason=booking.flagged_reason,
        replaced_by=booking.replaced_by.national_id if booking.replaced_by is not None else "",
        allocations=[
            pb.Allocation(
                pool=a.pool.national_id,
                center=a.pool.center.national_id,
                accelerators=a.accelerators,
                start=ts(a.start),
                end=ts(a.end),
                workload_state=a.workload_state,
            )
            for a in booking.allocations.all()
        ],
        created_at=ts(booking.created_at),
        hold_expires_at=ts(booking.hold_expires_at),
        booking_class=booking.booking_class_id,
    )


def booked_to_pb(booking: Booking, parts: list[OptionPart]) -> pb.Booking:
    """A booking just made, from what the booking statement answered and the option's parts
    (no read back: nothing about it has changed since its commit but what we know)."""
    start, end = ts(booking.window_start), ts(booking.window_end)
    return pb.Booking(
        booking_id=booking.national_id,
        organization=booking.organization.slug,
        status=STATUS_TO_PB[booking.status],
        status_reason=booking.status_reason,
        window_start=start,
        window_end=end,
        accelerators=booking.accelerators,
        estimated_cost=str(booking.estimated_cost),
        currency=booking.currency,
        allocations=[
            pb.Allocation(
                pool=p.pool, center=p.center, accelerators=p.accelerators, start=start, end=end
            )
            for p in parts
        ],
        created_at=ts(booking.created_at),
        hold_expires_at=ts(booking.hold_expires_at),
    )


def event_to_pb(event: BookingEvent, booking_id: str) -> pb.BookingEvent:
    return pb.BookingEvent(
        event_id=event.pk,
        booking_id=booking_id,
        time=ts(event.time),
        kind=event.kind,
        status=STATUS_TO_PB[event.status],
        message=event.message,
        replaced_by=str(event.data.get("replaced_by", "")),
    )
