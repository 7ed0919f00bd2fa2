"""REST doors of verification: parse, call one service or selector, render.

Tenancy comes from the selectors: runs, heartbeats and downtimes belong to the pool's operator
(and platform staff); availability of a pool is readable by whoever may see the pool. A foreign
object is a 404.
"""

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from registry import selectors as registry_selectors
from registry.api.permissions import OperatorWritePermission
from registry.choices import Door
from verification import selectors, services
from verification.api import serializers as s
from verification.choices import Trigger
from verification.filtersets import (
    HeartbeatFilterSet,
    ScheduledDowntimeFilterSet,
    VerificationRunFilterSet,
)
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun

DOOR = Door.API


class VerificationRunViewSet(viewsets.ReadOnlyModelViewSet[VerificationRun]):
    """Verification runs with their evidence, for the pool's operator and platform staff."""

    serializer_class = s.VerificationRunSerializer
    permission_classes = [IsAuthenticated]
    lookup_field = "run_id"
    filterset_class = VerificationRunFilterSet
    ordering_fields = ["created_at", "finished_at"]

    def get_queryset(self) -> QuerySet[VerificationRun]:
        return selectors.runs_visible_to(self.request.user)


class PoolReverifyView(APIView):
    """Ask for a new verification of one of the caller's pools (rate-limited per user)."""

    permission_classes = [IsAuthenticated, OperatorWritePermission]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "reverify"

    @extend_schema(request=None, responses={202: s.VerificationRunSerializer})
    def post(self, request: Request, national_id: str) -> Response:
        pool = get_object_or_404(
            registry_selectors.pools_editable_by(request.user), national_id=national_id
        )
        run, created = services.verification_request(
            pool=pool, trigger=Trigger.OPERATOR_REQUEST, actor=request.user, door=DOOR
        )
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        data = s.VerificationRunSerializer(run, context={"request": request}).data
        return Response(data, status=code)


class HeartbeatViewSet(viewsets.ReadOnlyModelViewSet[Heartbeat]):
    """Heartbeats of the caller's pools, newest first (``?pool=`` narrows to one pool)."""

    serializer_class = s.HeartbeatSerializer
    permission_classes = [IsAuthenticated]
    filterset_class = HeartbeatFilterSet

    def get_queryset(self) -> QuerySet[Heartbeat]:
        return selectors.heartbeats_visible_to(self.request.user)


class AvailabilityView(APIView):
    """Per-day availability and reliability of a pool the caller may see."""

    permission_classes: list[Any] = []

    @extend_schema(
        parameters=[
            OpenApiParameter("pool", str, required=True, description="pool national id"),
            OpenApiParameter("days", int, description="1-90, default 7"),
        ],
        responses=s.AvailabilitySerializer,
    )
    def get(self, request: Request) -> Response:
        query = s.AvailabilityQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        pool = get_object_or_404(
            registry_selectors.pools_visible_to(request.user),
            national_id=query.validated_data["pool"],
        )
        days = selectors.availability_by_day(pool=pool, days=query.validated_data["days"])
        return Response(s.AvailabilitySerializer({"pool": pool.national_id, "days": days}).data)


class ScheduledDowntimeViewSet(
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.ReadOnlyModelViewSet[ScheduledDowntime],
):
    """Maintenance windows operators announce for their pools and centers."""

    serializer_class = s.ScheduledDowntimeSerializer
    permission_classes = [IsAuthenticated, OperatorWritePermission]
    filterset_class = ScheduledDowntimeFilterSet

    def get_queryset(self) -> QuerySet[ScheduledDowntime]:
        return selectors.downtimes_visible_to(self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        downtime = services.downtime_declare(actor=request.user, door=DOOR, **ser.validated_data)
        return Response(self.get_serializer(downtime).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.downtime_delete(downtime=self.get_object(), actor=request.user, door=DOOR)
        return Response(status=status.HTTP_204_NO_CONTENT)
