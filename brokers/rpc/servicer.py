"""The ``Broker`` gRPC servicer: convert the request, call one service, convert back.

Authentication and error mapping happen in ``brokers.rpc.interceptors``; tenancy in
``brokers.selectors``. Method docstrings follow the comments of ``protos/broker.proto``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
from django.core.exceptions import ValidationError
from django.db import close_old_connections

from brokers import selectors, services
from brokers.choices import FINAL_STATUSES, BookingStatus
from brokers.models import Booking
from brokers.rpc import convert
from brokers.rpc.interceptors import current_user
from protos import broker_pb2 as pb
from protos import broker_pb2_grpc
from registry.choices import Door

DOOR = Door.BROKER
# How often WatchBooking looks for new events.
WATCH_POLL_SECONDS = 0.2


def _booking(booking_id: str) -> Booking:
    """A booking the caller may see, with what ``booking_to_pb`` reads (DoesNotExist if not)."""
    return (
        selectors.bookings_visible_to(current_user.get())
        .select_related("replaced_by")
        .prefetch_related("allocations__pool__center")
        .get(national_id=booking_id)
    )


class BrokerServicer(broker_pb2_grpc.BrokerServicer):
    """Capacity, placement and bookings for AI firms' programs."""

    def QueryCapacity(
        self, request: pb.QueryCapacityRequest, context: grpc.ServicerContext
    ) -> pb.QueryCapacityResponse:
        """Verified pools with free accelerators over a window, by national id, paged."""
        rows, token = services.capacity_query(
            actor=current_user.get(),
            start=convert.from_ts(request.start, request.HasField("start")),
            end=convert.from_ts(request.end, request.HasField("end")),
            accelerator_model=request.accelerator_model,
            hub=request.hub,
            cluster=request.cluster,
            interconnect=request.interconnect,
            max_price=convert.decimal_from_pb(request.max_price, "max_price"),
            page_size=request.page_size or 100,
            page_token=request.page_token,
        )
        return convert.capacity_to_pb(rows, token)

    def Place(self, request: pb.PlaceRequest, context: grpc.ServicerContext) -> pb.PlaceResponse:
        """Ranked placement options with every rejection explained; books nothing."""
        result = services.placement_preview(
            spec=convert.spec_from_pb(request.spec),
            actor=current_user.get(),
            explain=not request.brief,
            max_options=min(request.max_options or 5, 20),
        )
        return convert.placement_to_pb(result)

    def Book(self, request: pb.BookRequest, context: grpc.ServicerContext) -> pb.BookResponse:
        """Book on the best placement (or the given option); idempotent per key."""
        booking = services.booking_create(
            spec=convert.spec_from_pb(request.spec),
            idempotency_key=request.idempotency_key,
            actor=current_user.get(),
            door=DOOR,
            option=[(c.pool, c.accelerators) for c in request.option] or None,
            hold=request.hold,
        )
        return pb.BookResponse(booking=convert.booking_to_pb(_booking(booking.national_id)))

    def GetBooking(
        self, request: pb.GetBookingRequest, context: grpc.ServicerContext
    ) -> pb.GetBookingResponse:
        """One booking the caller may see."""
        return pb.GetBookingResponse(booking=convert.booking_to_pb(_booking(request.booking_id)))

    def ListBookings(
        self, request: pb.ListBookingsRequest, context: grpc.ServicerContext
    ) -> pb.ListBookingsResponse:
        """The caller's bookings, newest first, paged by id."""
        size = min(request.page_size or 50, 500)
        qs = (
            selectors.bookings_visible_to(current_user.get())
            .select_related("replaced_by")
            .prefetch_related("allocations__pool__center")
            .order_by("-id")
        )
        if request.page_token:
            if not request.page_token.isdigit() or len(request.page_token) > 18:
                raise ValidationError({"page_token": ["Not a page token from this server."]})
            qs = qs.filter(id__lt=int(request.page_token))
        if request.status:
            qs = qs.filter(status=convert.STATUS_FROM_PB.get(request.status, ""))
        page = list(qs[: size + 1])
        return pb.ListBookingsResponse(
            bookings=[convert.booking_to_pb(b) for b in page[:size]],
            next_page_token=str(page[size - 1].pk) if len(page) > size else "",
        )

    def CancelBooking(
        self, request: pb.CancelBookingRequest, context: grpc.ServicerContext
    ) -> pb.CancelBookingResponse:
        """Cancel a booking of the caller's firm and give its capacity back."""
        user = current_user.get()
        booking = selectors.bookings_cancellable_by(user).get(national_id=request.booking_id)
        services.booking_cancel(booking=booking, actor=user, door=DOOR, reason=request.reason)
        return pb.CancelBookingResponse(booking=convert.booking_to_pb(_booking(request.booking_id)))

    def ConfirmBooking(
        self, request: pb.ConfirmBookingRequest, context: grpc.ServicerContext
    ) -> pb.ConfirmBookingResponse:
        """Confirm a held booking of the caller's firm before its hold lapses."""
        user = current_user.get()
        booking = selectors.bookings_cancellable_by(user).get(national_id=request.booking_id)
        services.booking_confirm(booking=booking, actor=user, door=DOOR)
        return pb.ConfirmBookingResponse(
            booking=convert.booking_to_pb(_booking(request.booking_id))
        )

    def WatchBooking(
        self, request: pb.WatchBookingRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchBookingResponse]:
        """Past events, then new ones as they happen, until the booking ends; follows a
        replacement to the new booking when the caller may see it too (the host operator of
        the first booking may not host the new one: its stream ends there)."""
        user = current_user.get()
        booking = _booking(request.booking_id)
        after = request.after_event_id
        while context.is_active():
            events = selectors.booking_events_after(booking=booking, after_id=after)
            for event in events:
                after = event.pk
                yield pb.WatchBookingResponse(event=convert.event_to_pb(event, booking.national_id))
            booking.refresh_from_db(fields=["status", "replaced_by"])
            if booking.status in FINAL_STATUSES and not events:
                if booking.status == BookingStatus.REPLACED and booking.replaced_by_id:
                    replacement = (
                        selectors.bookings_visible_to(user)
                        .filter(pk=booking.replaced_by_id)
                        .first()
                    )
                    if replacement is None:
                        return
                    booking, after = replacement, 0
                    continue
                return
            # Between polls, give the connection back to its age check (long-lived stream).
            close_old_connections()
            time.sleep(WATCH_POLL_SECONDS)
