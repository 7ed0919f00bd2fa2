"""A small Python client of the broker for AI firms' programs (no Django needed).

Every call carries the bearer token and a deadline; the channel retries UNAVAILABLE only (gRFC
A6), which is safe for every method: reads are idempotent and ``book`` always sends an
idempotency key (one is generated when the caller gives none, and reused by the retries).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from protos import broker_pb2 as pb
from protos import broker_pb2_grpc

DEFAULT_TIMEOUT = 10.0
RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "interconnect.broker.v1.Broker"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
LATENCY = {
    "interactive": pb.LATENCY_CLASS_INTERACTIVE,
    "training": pb.LATENCY_CLASS_TRAINING,
    "batch": pb.LATENCY_CLASS_BATCH,
}


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def workload_spec(
    *,
    accelerator_model: str = "",
    count: int = 0,
    a100_equivalents: float = 0.0,
    duration_seconds: float = 3600.0,
    earliest_start: dt.datetime | None = None,
    latency_class: str = "training",
    price_cap: str = "",
    **fields: Any,
) -> pb.WorkloadSpec:
    """A WorkloadSpec message from plain Python values."""
    msg = pb.WorkloadSpec(
        accelerator_model=accelerator_model,
        count=count,
        a100_equivalents=a100_equivalents,
        duration_seconds=duration_seconds,
        latency_class=LATENCY[latency_class],
        price_cap=price_cap,
        **fields,
    )
    if earliest_start is not None:
        msg.earliest_start.CopyFrom(timestamp(earliest_start))
    return msg


class BrokerClient:
    """Calls to one broker (``host:port``) as the holder of ``token``."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca: str | Path | None = None,
        tls: bool = False,
    ) -> None:
        """``ca``: a PEM bundle to trust (TLS; e.g. the deployment's development authority);
        ``tls`` alone: TLS with the system's trusted authorities. Neither: plaintext (loopback
        development only: the token would cross the network in clear)."""
        options = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_CONFIG)]
        if ca is not None or tls:
            roots = Path(ca).read_bytes() if ca is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = broker_pb2_grpc.BrokerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def capacity(self, **filters: Any) -> pb.QueryCapacityResponse:
        reply: pb.QueryCapacityResponse = self.stub.QueryCapacity(
            pb.QueryCapacityRequest(**filters), metadata=self.metadata, timeout=self.timeout
        )
        return reply

    def capacity_all(self, **filters: Any) -> Iterator[pb.CapacityEntry]:
        """Every page of a capacity query."""
        token = ""
        while True:
            page = self.capacity(page_token=token, **filters)
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    def place(
        self, spec: pb.WorkloadSpec, *, max_options: int = 5, brief: bool = False
    ) -> pb.PlaceResponse:
        reply: pb.PlaceResponse = self.stub.Place(
            pb.PlaceRequest(spec=spec, max_options=max_options, brief=brief),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply

    def book(
        self,
        spec: pb.WorkloadSpec,
        *,
        idempotency_key: str = "",
        option: Sequence[tuple[str, int]] = (),
        timeout: float | None = None,
        hold: bool = False,
    ) -> pb.Booking:
        request = pb.BookRequest(
            spec=spec,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            option=[pb.OptionChoice(pool=p, accelerators=n) for p, n in option],
            hold=hold,
        )
        reply: pb.BookResponse = self.stub.Book(
            request, metadata=self.metadata, timeout=timeout or self.timeout
        )
        return reply.booking

    def booking(self, booking_id: str) -> pb.Booking:
        reply: pb.GetBookingResponse = self.stub.GetBooking(
            pb.GetBookingRequest(booking_id=booking_id),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply.booking

    def bookings(self, *, page_size: int = 50, page_token: str = "") -> pb.ListBookingsResponse:
        reply: pb.ListBookingsResponse = self.stub.ListBookings(
            pb.ListBookingsRequest(page_size=page_size, page_token=page_token),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply

    def cancel(self, booking_id: str, reason: str = "") -> pb.Booking:
        reply: pb.CancelBookingResponse = self.stub.CancelBooking(
            pb.CancelBookingRequest(booking_id=booking_id, reason=reason),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply.booking

    def confirm(self, booking_id: str) -> pb.Booking:
        reply: pb.ConfirmBookingResponse = self.stub.ConfirmBooking(
            pb.ConfirmBookingRequest(booking_id=booking_id),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply.booking

    def offer(self, booking_id: str, *, price: str, start: dt.datetime | None = None) -> pb.Offer:
        request = pb.OfferBookingRequest(booking_id=booking_id, price=price)
        if start is not None:
            request.start.CopyFrom(timestamp(start))
        reply: pb.OfferBookingResponse = self.stub.OfferBooking(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return reply.offer

    def offers(self, *, page_size: int = 50, page_token: str = "") -> pb.ListOffersResponse:
        reply: pb.ListOffersResponse = self.stub.ListOffers(
            pb.ListOffersRequest(page_size=page_size, page_token=page_token),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply

    def buy(self, offer_id: str, *, image: str = "", command: str = "") -> pb.Booking:
        reply: pb.BuyOfferResponse = self.stub.BuyOffer(
            pb.BuyOfferRequest(offer_id=offer_id, image=image, command=command),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return reply.booking

    def withdraw(self, offer_id: str) -> pb.Offer:
        reply: pb.WithdrawOfferResponse = self.stub.WithdrawOffer(
            pb.WithdrawOfferRequest(offer_id=offer_id), metadata=self.metadata, timeout=self.timeout
        )
        return reply.offer

    def watch(self, booking_id: str, *, timeout: float = 3600.0) -> Iterator[pb.BookingEvent]:
        """Events of the booking until it ends (a long deadline: the stream lasts the run)."""
        for response in self.stub.WatchBooking(
            pb.WatchBookingRequest(booking_id=booking_id), metadata=self.metadata, timeout=timeout
        ):
            yield response.event
