"""The ``Broker`` gRPC servicer: convert the request, call one service, convert back.

Authentication and error mapping happen in the interceptors (``registry.rpc``); tenancy in
``brokers.selectors``. Method docstrings follow the comments of ``protos/broker.proto``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import Any

import grpc
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError
from django.db.models import F
from django.utils import timezone
from grpc_status import rpc_status

from brokers import market, notify, selectors, services
from brokers.choices import FINAL_STATUSES, BookingStatus
from brokers.models import Booking, BookingEvent
from brokers.rpc import convert
from interconnect.metrics import GRPC_LATENCY
from protos import broker_pb2 as pb
from protos import broker_pb2_grpc
from registry.choices import Door
from registry.context import new_request_id, request_id_var
from registry.errors import rpc_status_for
from registry.rpc import (
    DATABASE_UNAVAILABLE_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    HandlerConnections,
    authenticate,
    current_user,
    fit_connection,
    internal_status,
    refusal,
)

logger = logging.getLogger(__name__)

DOOR = Door.BROKER
# Where a bad-input message on no field is reported (``registry.rpc.ErrorInterceptor``).
ERROR_FIELD = "spec"
# The connections of the broker's handler threads (closed once the broker stopped).
HANDLER_CONNECTIONS = HandlerConnections()
# How often WatchBooking looks for new events without notifications (SQLite).
WATCH_POLL_SECONDS = 0.2
# With notifications, a stream reads again when woken, or after this long regardless.
WATCH_IDLE_SECONDS = 30.0
_HOUR = dt.timedelta(hours=1)


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
        user = current_user.get()
        offers_window = None
        if not request.page_token:  # the first page lists open resale offers too
            start = convert.from_ts(request.start, request.HasField("start")) or timezone.now()
            offers_window = (
                start,
                convert.from_ts(request.end, request.HasField("end")) or start + _HOUR,
            )
        rows, token, open_offers = services.capacity_query_probed(
            actor=user,
            start=convert.from_ts(request.start, request.HasField("start")),
            end=convert.from_ts(request.end, request.HasField("end")),
            accelerator_model=request.accelerator_model,
            hub=request.hub,
            cluster=request.cluster,
            interconnect=request.interconnect,
            max_price=convert.decimal_from_pb(request.max_price, "max_price"),
            page_size=request.page_size or 100,
            page_token=request.page_token,
            # Whether any offer is open over that window, asked by the free-capacity statement
            # (no round trip of its own; issue 14): False spares the offers query.
            offers_window=offers_window,
        )
        offers = []
        if offers_window is not None and open_offers is not False:
            offers = [
                market.offer_view(o, user)
                for o in market.offers_in_window(
                    user,
                    start=offers_window[0],
                    end=offers_window[1],
                    accelerator_model=request.accelerator_model,
                    hub=request.hub,
                    probed=open_offers is True,
                )
            ]
        return convert.capacity_to_pb(rows, token, offers)

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
        parts = getattr(booking, "booked_parts", None)
        if parts is not None:  # just made: answer from what the statement returned
            return pb.BookResponse(booking=convert.booked_to_pb(booking, parts))
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

    def OfferBooking(
        self, request: pb.OfferBookingRequest, context: grpc.ServicerContext
    ) -> pb.OfferBookingResponse:
        """Offer a booking of the caller's firm (or its part from ``start``) for resale."""
        user = current_user.get()
        booking = selectors.bookings_cancellable_by(user).get(national_id=request.booking_id)
        offer = market.offer_create(
            booking=booking,
            actor=user,
            door=DOOR,
            price=market.parse_price(request.price),
            start=convert.from_ts(request.start, request.HasField("start")),
        )
        return pb.OfferBookingResponse(offer=convert.offer_to_pb(market.offer_view(offer, user)))

    def ListOffers(
        self, request: pb.ListOffersRequest, context: grpc.ServicerContext
    ) -> pb.ListOffersResponse:
        """Open offers, and the caller's own offers and purchases, newest first, paged by id."""
        user = current_user.get()
        size = min(request.page_size or 50, 500)
        qs = market.offers_visible_to(user).order_by("-id")
        if request.page_token:
            if not request.page_token.isdigit() or len(request.page_token) > 18:
                raise ValidationError({"page_token": ["Not a page token from this server."]})
            qs = qs.filter(id__lt=int(request.page_token))
        page = list(qs[: size + 1])
        return pb.ListOffersResponse(
            offers=[convert.offer_to_pb(market.offer_view(o, user)) for o in page[:size]],
            next_page_token=str(page[size - 1].pk) if len(page) > size else "",
        )

    def BuyOffer(
        self, request: pb.BuyOfferRequest, context: grpc.ServicerContext
    ) -> pb.BuyOfferResponse:
        """Buy an open offer; exactly one buyer wins."""
        user = current_user.get()
        offer = market.offers_visible_to(user).get(national_id=request.offer_id)
        booking = market.offer_buy(
            offer=offer, actor=user, door=DOOR, image=request.image, command=request.command
        )
        return pb.BuyOfferResponse(booking=convert.booking_to_pb(_booking(booking.national_id)))

    def WithdrawOffer(
        self, request: pb.WithdrawOfferRequest, context: grpc.ServicerContext
    ) -> pb.WithdrawOfferResponse:
        """Withdraw an open offer of the caller's firm."""
        user = current_user.get()
        offer = market.offers_withdrawable_by(user).get(national_id=request.offer_id)
        offer = market.offer_withdraw(offer=offer, actor=user, door=DOOR)
        return pb.WithdrawOfferResponse(offer=convert.offer_to_pb(market.offer_view(offer, user)))


async def watch_booking(
    request: pb.WatchBookingRequest,
    call: grpc.aio.ServicerContext[Any, Any],
    executor: futures.Executor,
) -> AsyncIterator[pb.WatchBookingResponse]:
    """WatchBooking: past events, then new ones as they commit, until the booking ends; follows
    a replacement to the new booking when the caller may see it too (the host operator of the
    first booking may not host the new one: its stream ends there).

    A coroutine, not a thread: it sleeps until the database notifies an event of the booking
    (``brokers.notify``; every ``WATCH_IDLE_SECONDS`` regardless, or every
    ``WATCH_POLL_SECONDS`` without notifications), then reads the new events in a worker
    thread. Authentication, error mapping and the latency metric are the interceptors' rules
    (``registry.rpc``), applied here since a stream does not pass through them."""
    loop = asyncio.get_running_loop()
    metadata = dict(call.invocation_metadata() or ())
    header = str(metadata.get("authorization", ""))
    request_id = new_request_id(str(metadata.get("x-request-id", "")) or None)
    started = time.perf_counter()
    outcome = "OK"
    woken = asyncio.Event()
    unsubscribe: Callable[[], None] = lambda: None  # noqa: E731

    def wake() -> None:
        loop.call_soon_threadsafe(woken.set)

    async def db(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(executor, _in_thread, fn, args, request_id)

    try:
        try:
            user = await db(authenticate, header)
        except (OperationalError, InterfaceError):
            outcome = "UNAVAILABLE"
            await _abort(call, refusal("database.unavailable", DATABASE_UNAVAILABLE_MESSAGE))
        if user is None:
            outcome = "UNAUTHENTICATED"
            await _abort(call, refusal("unauthenticated", UNAUTHENTICATED_MESSAGE))
        booking = await db(_visible_booking, user, request.booking_id)
        after = request.after_event_id
        unsubscribe = notify.subscribe(booking.pk, wake)
        while True:
            woken.clear()  # before reading: an event committed from here on wakes us
            events, status, replaced_by_id = await db(_events_after, booking.pk, after)
            for event in events:
                after = event.pk
                yield pb.WatchBookingResponse(event=convert.event_to_pb(event, booking.national_id))
            if status in FINAL_STATUSES:
                if events:
                    continue  # read once more: the end is a final status and nothing new
                if status == BookingStatus.REPLACED and replaced_by_id:
                    replacement = await db(_visible_replacement, user, replaced_by_id)
                    if replacement is None:
                        return
                    unsubscribe()
                    booking, after = replacement, 0
                    unsubscribe = notify.subscribe(booking.pk, wake)
                    continue
                return
            wait = WATCH_IDLE_SECONDS if notify.running() else WATCH_POLL_SECONDS
            try:
                await asyncio.wait_for(woken.wait(), wait)
            except TimeoutError:
                pass
    except grpc.aio.AbortError:
        raise
    except (asyncio.CancelledError, GeneratorExit):
        outcome = "CANCELLED"
        raise
    except Exception as exc:
        status = rpc_status_for(exc, field=ERROR_FIELD)
        if status is None:
            logger.exception("broker RPC WatchBooking failed")
            status = internal_status("WatchBooking")
        mapped = rpc_status.to_status(status)
        outcome = mapped.code.name
        await _abort(call, mapped)
    finally:
        unsubscribe()
        GRPC_LATENCY.labels(method="WatchBooking", code=outcome).observe(
            time.perf_counter() - started
        )


async def _abort(call: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    await call.abort(status.code, status.details, status.trailing_metadata)


def _in_thread(fn: Callable[..., Any], args: tuple[Any, ...], request_id: str) -> Any:
    """Run ``fn`` in a worker thread the way the interceptors run a handler: a connection fit
    for use, the request id set, the connection remembered for the server's stop."""
    fit_connection()
    token = request_id_var.set(request_id)
    try:
        return fn(*args)
    finally:
        request_id_var.reset(token)
        HANDLER_CONNECTIONS.remember()


def _visible_booking(user: Any, booking_id: str) -> Booking:
    return selectors.bookings_visible_to(user).get(national_id=booking_id)


def _events_after(booking_id: int, after: int) -> tuple[list[BookingEvent], str, int | None]:
    """The booking's events after ``after`` and its status (and replacement), in one query
    when there are events (the booking's columns joined to them: one snapshot), two when
    there are none. A stream woken by its event's notification reads once, with one round
    trip: with 1,000 streams on a process that is one read per event committed."""
    rows = (
        BookingEvent.objects.filter(booking_id=booking_id, id__gt=after)
        .annotate(
            booking_status=F("booking__status"), booking_replaced_by=F("booking__replaced_by_id")
        )
        .order_by("id")
    )
    events: list[BookingEvent] = []
    status: str = ""
    replaced_by_id: int | None = None
    for row in rows:
        events.append(row)
        status, replaced_by_id = row.booking_status, row.booking_replaced_by
    if events:
        return events, status, replaced_by_id
    status, replaced_by_id = (
        Booking.objects.filter(pk=booking_id).values_list("status", "replaced_by_id").get()
    )
    return events, status, replaced_by_id


def _visible_replacement(user: Any, booking_pk: int) -> Booking | None:
    return selectors.bookings_visible_to(user).filter(pk=booking_pk).first()
