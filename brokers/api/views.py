"""REST doors of the broker: parse, call one service, render. Same services as gRPC."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from brokers import market, selectors, services
from brokers.api import serializers as s
from brokers.filtersets import BookingFilterSet
from brokers.models import Booking, BookingClass, PriorityGrant, ResaleOffer
from registry.api.exceptions import validation_detail
from registry.choices import Door

DOOR = Door.API


class CapacityView(APIView):
    """Verified free capacity per pool over a window (default: the next hour), paged by
    ``page_token``."""

    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[s.CapacityQuerySerializer], responses=s.CapacityPageSerializer)
    def get(self, request: Request) -> Response:
        q = s.CapacityQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        p = q.validated_data
        try:
            rows, token = self._query(request, p)
        except DjangoValidationError as exc:
            # The service names its arguments; the answer names this endpoint's parameters.
            errors = validation_detail(exc)
            if "accelerator_model" in errors:
                errors["accelerator"] = errors.pop("accelerator_model")
            raise DRFValidationError(errors) from None
        offers = []
        if not p["page_token"]:
            start = p["start"] or timezone.now()
            offers = market.offers_in_window(
                request.user,
                start=start,
                end=p["end"] or start + dt.timedelta(hours=1),
                accelerator_model=p["accelerator"],
                hub=p["hub"],
            )
        page = {
            "results": [dataclasses.asdict(r) for r in rows],
            "next_page_token": token,
            "offers": [market.offer_view(o, request.user) for o in offers],
        }
        return Response(s.CapacityPageSerializer(page).data)

    def _query(self, request: Request, p: dict[str, Any]) -> tuple[list[Any], str]:
        return services.capacity_query(
            actor=request.user,
            start=p["start"],
            end=p["end"],
            accelerator_model=p["accelerator"],
            hub=p["hub"],
            cluster=p["cluster"],
            interconnect=p["interconnect"],
            max_price=p["max_price"],
            page_size=p["page_size"],
            page_token=p["page_token"],
        )


class PlacementView(APIView):
    """POST a workload specification: ranked options and every rejection explained. Books
    nothing."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=s.PlacementRequestSerializer, responses=s.PlacementSerializer)
    def post(self, request: Request) -> Response:
        ser = s.PlacementRequestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        max_options, explain = ser.validated_data["max_options"], ser.validated_data["explain"]
        result = services.placement_preview(
            spec=ser.to_spec(), actor=request.user, explain=explain, max_options=max_options
        )
        return Response(s.PlacementSerializer(result).data)


class BookingViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[Booking],
):
    """Bookings: create (with an idempotency key), list, retrieve, cancel. A firm sees its own;
    an operator sees the bookings on its pools, without their specification."""

    serializer_class = s.BookingSerializer
    permission_classes = [IsAuthenticated]
    lookup_field = "national_id"
    filterset_class = BookingFilterSet
    ordering_fields = ["created_at", "window_start"]

    def get_queryset(self) -> QuerySet[Booking]:
        qs = selectors.bookings_visible_to(self.request.user)
        if self.action in ("cancel", "confirm", "offer"):
            qs = selectors.bookings_cancellable_by(self.request.user)
        return qs.select_related("replaced_by").prefetch_related("allocations__pool__center")

    def _render(self, booking: Booking, code: int = status.HTTP_200_OK) -> Response:
        booking = (
            self.get_queryset()
            .model.objects.prefetch_related("allocations__pool__center")
            .select_related("organization", "replaced_by")
            .get(pk=booking.pk)
        )
        return Response(
            s.BookingSerializer(booking, context={"request": self.request}).data, status=code
        )

    @extend_schema(request=s.BookingCreateSerializer, responses=s.BookingSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = s.BookingCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        spec_ser = s.WorkloadSpecSerializer(data=request.data["spec"])
        spec_ser.is_valid(raise_exception=True)
        key = ser.validated_data.get("idempotency_key") or request.headers.get("Idempotency-Key")
        if not key:
            raise DRFValidationError(
                {"idempotency_key": ["Required (or an Idempotency-Key header)."]}
            )
        option = [(p["pool"], p["accelerators"]) for p in ser.validated_data.get("option") or []]
        booking = services.booking_create(
            spec=spec_ser.to_spec(),
            idempotency_key=key,
            actor=request.user,
            door=DOOR,
            option=option or None,
            hold=ser.validated_data["hold"],
        )
        return self._render(booking, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.BookingSerializer)
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, national_id: str) -> Response:
        """Confirm a held booking before its hold lapses; it is then dispatched."""
        booking = services.booking_confirm(booking=self.get_object(), actor=request.user, door=DOOR)
        return self._render(booking)

    @extend_schema(request=None, responses=s.BookingSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, national_id: str) -> Response:
        """Cancel the booking and give its capacity back."""
        booking = services.booking_cancel(
            booking=self.get_object(),
            actor=request.user,
            door=DOOR,
            reason=str(request.data.get("reason", ""))[:500],
        )
        return self._render(booking)

    @extend_schema(request=s.OfferCreateSerializer, responses={201: s.OfferSerializer})
    @action(detail=True, methods=["post"])
    def offer(self, request: Request, national_id: str) -> Response:
        """Offer the booking (confirmed, reserved, not started; or its part from ``start``, a
        slot boundary) to other firms at ``price``; the offer lapses at the booking's start."""
        booking = self.get_object()  # another firm's booking: 404 before any field check
        ser = s.OfferCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        offer = market.offer_create(
            booking=booking,
            actor=request.user,
            door=DOOR,
            price=market.parse_price(ser.validated_data["price"]),
            start=ser.validated_data["start"],
        )
        return Response(
            s.OfferSerializer(market.offer_view(offer, request.user)).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        parameters=[s.EventsQuerySerializer], responses=s.BookingEventSerializer(many=True)
    )
    # Not paginated: the schema must say a list, as the body is (found by F1's fuzzing).
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request: Request, national_id: str) -> Response:
        """The booking's events, oldest first (what WatchBooking streams)."""
        booking = self.get_object()
        q = s.EventsQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        events = selectors.booking_events_after(booking=booking, after_id=q.validated_data["after"])
        return Response(s.BookingEventSerializer(events, many=True).data)


class OfferViewSet(viewsets.GenericViewSet[ResaleOffer]):
    """Resale offers: every open offer of other firms (without their bookings) and the
    caller's own offers and purchases; buy one, or withdraw one of yours."""

    permission_classes = [IsAuthenticated]
    lookup_field = "national_id"
    # No serializer_class: an offer is rendered from what the caller may see of it
    # (``market.offer_view``, a dict), by OfferSerializer, named in each method's schema.

    def get_queryset(self) -> QuerySet[ResaleOffer]:
        if self.action == "withdraw":
            return market.offers_withdrawable_by(self.request.user)
        return market.offers_visible_to(self.request.user).order_by("-id")

    def _one(self, offer: ResaleOffer, code: int = status.HTTP_200_OK) -> Response:
        return Response(s.OfferSerializer(market.offer_view(offer, self.request.user)).data, code)

    @extend_schema(responses=s.OfferSerializer(many=True))
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        items = page if page is not None else list(self.get_queryset()[:200])
        data = [s.OfferSerializer(market.offer_view(o, request.user)).data for o in items]
        if page is not None:
            return self.get_paginated_response(data)
        return Response(data)

    @extend_schema(responses=s.OfferSerializer)
    def retrieve(self, request: Request, national_id: str) -> Response:
        return self._one(self.get_object())

    @extend_schema(request=s.OfferBuySerializer, responses={201: s.BookingSerializer})
    @action(detail=True, methods=["post"])
    def buy(self, request: Request, national_id: str) -> Response:
        """Buy the offer: a new booking of yours takes its allocations over (one buyer wins;
        the others get 409 ``offer.not_open``)."""
        offer = self.get_object()
        ser = s.OfferBuySerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        booking = market.offer_buy(offer=offer, actor=request.user, door=DOOR, **ser.validated_data)
        booking = (
            Booking.objects.select_related("organization", "replaced_by")
            .prefetch_related("allocations__pool__center")
            .get(pk=booking.pk)
        )
        return Response(
            s.BookingSerializer(booking, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=None, responses=s.OfferSerializer)
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, national_id: str) -> Response:
        """Withdraw an open offer of your firm."""
        offer = market.offer_withdraw(offer=self.get_object(), actor=request.user, door=DOOR)
        return self._one(offer)


class PriorityGrantView(APIView):
    """The priority class granted to an organization (accelerator-hours): the firm reads its
    own; platform staff read and set any (``PUT`` with ``accelerator_hours``, null withdraws)."""

    permission_classes = [IsAuthenticated]

    def _org(self, request: Request, slug: str) -> Any:
        from registry import selectors as registry_selectors

        return registry_selectors.organizations_visible_to(request.user).filter(slug=slug).first()

    def _answer(self, slug: str, grant: PriorityGrant | None) -> Response:
        hours = grant.accelerator_hours if grant else None
        return Response(
            s.PriorityGrantSerializer({"organization": slug, "accelerator_hours": hours}).data
        )

    @extend_schema(responses=s.PriorityGrantSerializer)
    def get(self, request: Request, slug: str) -> Response:
        org = self._org(request, slug)
        if org is None:
            raise NotFound
        return self._answer(slug, PriorityGrant.objects.filter(organization=org).first())

    @extend_schema(request=s.PriorityGrantSerializer, responses=s.PriorityGrantSerializer)
    def put(self, request: Request, slug: str) -> Response:
        org = self._org(request, slug)
        if org is None:
            raise NotFound
        ser = s.PriorityGrantSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        grant = market.priority_grant_set(
            organization=org,
            actor=request.user,
            door=DOOR,
            accelerator_hours=ser.validated_data["accelerator_hours"],
        )
        return self._answer(slug, grant)


class BookingClassView(APIView):
    """The booking classes (reserved, spot, priority) and what each may do."""

    permission_classes = [IsAuthenticated]
    # Not paginated: three rows.
    pagination_class = None

    @extend_schema(responses=s.BookingClassSerializer(many=True))
    def get(self, request: Request) -> Response:
        classes = BookingClass.objects.all()
        return Response(s.BookingClassSerializer(classes, many=True).data)


class UsageView(APIView):
    """Accelerator-hours and cost of finished work per month, for the caller's organization
    (platform staff: any, with ``?organization=<slug>``)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=s.UsageSerializer)
    def get(self, request: Request) -> Response:
        from registry import selectors as registry_selectors
        from registry.models import Organization

        org = registry_selectors.organization_of(request.user)
        slug = request.query_params.get("organization")
        if slug and registry_selectors.is_platform_staff(request.user):
            org = Organization.objects.filter(slug=slug).first()
        if org is None:
            raise NotFound
        rows = selectors.usage_by_month(organization_id=org.pk)
        return Response(s.UsageSerializer({"organization": org.slug, "months": rows}).data)


class QuotaView(APIView):
    """An AI firm's quota: the firm reads its own; platform staff read and set any
    (``PUT /api/v1/quotas/<org slug>/`` with ``max_concurrent_accelerators`` and
    ``max_accelerator_hours_per_month``, null for no limit)."""

    permission_classes = [IsAuthenticated]

    def _org(self, request: Request, slug: str) -> Any:
        from registry import selectors as registry_selectors

        return registry_selectors.organizations_visible_to(request.user).filter(slug=slug).first()

    @extend_schema(responses=s.QuotaSerializer)
    def get(self, request: Request, slug: str) -> Response:
        from brokers.models import Quota

        org = self._org(request, slug)
        if org is None:
            raise NotFound
        quota = Quota.objects.filter(organization=org).first()
        if quota is None:  # no quota: no limits
            quota = Quota(organization=org)
        return Response(s.QuotaSerializer(quota).data)

    @extend_schema(request=s.QuotaSerializer, responses=s.QuotaSerializer)
    def put(self, request: Request, slug: str) -> Response:
        org = self._org(request, slug)
        if org is None:
            raise NotFound
        ser = s.QuotaSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        quota = services.quota_set(
            organization=org, actor=request.user, door=DOOR, **ser.validated_data
        )
        return Response(s.QuotaSerializer(quota).data)
