"""REST doors of the registry: parse, call one service, render."""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from registry import certificates, selectors, services, webhooks
from registry.api import serializers as s
from registry.api.permissions import OperatorWritePermission, OrgAdminPermission
from registry.choices import Door
from registry.filtersets import (
    AcceleratorFilterSet,
    CenterFilterSet,
    ChangeRecordFilterSet,
    ClusterFilterSet,
    PoolFilterSet,
)
from registry.models import (
    Accelerator,
    ApiToken,
    Center,
    ChangeRecord,
    Cluster,
    Hub,
    HubLink,
    Organization,
    Pool,
    WebhookDelivery,
    WebhookSubscription,
)

DOOR = Door.API


class HubViewSet(viewsets.ReadOnlyModelViewSet[Hub]):
    """The 8 national hubs (public)."""

    queryset = Hub.objects.prefetch_related("clusters")
    serializer_class = s.HubSerializer
    lookup_field = "code"
    permission_classes = [AllowAny]
    filterset_fields = ["region"]
    search_fields = ["name", "code"]
    ordering_fields = ["code", "name"]


class ClusterViewSet(viewsets.ReadOnlyModelViewSet[Cluster]):
    """The 10 national data-center clusters (public)."""

    queryset = Cluster.objects.select_related("hub")
    serializer_class = s.ClusterSerializer
    lookup_field = "code"
    permission_classes = [AllowAny]
    filterset_class = ClusterFilterSet
    search_fields = ["name", "code", "province"]
    ordering_fields = ["code", "name"]


class HubLinkViewSet(viewsets.ReadOnlyModelViewSet[HubLink]):
    """Network links between hubs: declared or measured latency and bandwidth (public)."""

    queryset = HubLink.objects.select_related("a", "b")
    serializer_class = s.HubLinkSerializer
    permission_classes = [AllowAny]
    filterset_fields = ["source"]


class AcceleratorViewSet(viewsets.ReadOnlyModelViewSet[Accelerator]):
    """The accelerator catalog with datasheet figures and their sources (public)."""

    queryset = Accelerator.objects.all()
    serializer_class = s.AcceleratorSerializer
    lookup_field = "slug"
    permission_classes = [AllowAny]
    filterset_class = AcceleratorFilterSet
    search_fields = ["vendor", "model", "slug"]
    ordering_fields = ["vendor", "model", "bf16_dense_tflops", "memory_gb"]


class OrganizationViewSet(viewsets.ReadOnlyModelViewSet[Organization]):
    """The caller's own organization (platform staff see all)."""

    serializer_class = s.OrganizationSerializer
    lookup_field = "slug"
    permission_classes = [IsAuthenticated]
    search_fields = ["name", "slug"]

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.organizations_visible_to(self.request.user)


class CenterViewSet(viewsets.ModelViewSet[Center]):
    """Compute centers. Operators create and change their own; everyone reads listed ones."""

    lookup_field = "national_id"
    permission_classes = [OperatorWritePermission]
    filterset_class = CenterFilterSet
    search_fields = ["name", "national_id"]
    ordering_fields = ["national_id", "name", "pue", "green_power_share", "created_at"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Center]:
        # Reads see what the selector shows; writes reach only the actor's own objects, so a
        # foreign center is a 404 whatever the method.
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return selectors.centers_visible_to(self.request.user)
        return selectors.centers_editable_by(self.request.user)

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action in ("create", "partial_update"):
            return s.CenterWriteSerializer
        if self.action == "transition":
            return s.TransitionSerializer
        return s.CenterSerializer

    def _render(self, center: Center, code: int = status.HTTP_200_OK) -> Response:
        return Response(
            s.CenterSerializer(center, context={"request": self.request}).data, status=code
        )

    @extend_schema(responses=s.CenterSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        data.pop("version", None)
        center = services.center_register(actor=request.user, door=DOOR, data=data)
        return self._render(center, status.HTTP_201_CREATED)

    @extend_schema(responses=s.CenterSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        center = self.get_object()
        ser = self.get_serializer(center, data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        version = data.pop("version", None)
        center = services.center_update(
            center=center, actor=request.user, door=DOOR, data=data, expected_version=version
        )
        return self._render(center)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.center_delete(center=self.get_object(), actor=request.user, door=DOOR)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=s.CenterSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request: Request, national_id: str) -> Response:
        """Submit the center and its draft pools for verification."""
        center = services.center_submit(center=self.get_object(), actor=request.user, door=DOOR)
        return self._render(center)

    @extend_schema(responses=s.CenterSerializer)
    @action(detail=True, methods=["post"])
    def transition(self, request: Request, national_id: str) -> Response:
        """Ask for a lifecycle move (retire, withdraw; suspend for platform staff)."""
        ser = s.TransitionSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        center = services.center_request_transition(
            center=self.get_object(), actor=request.user, door=DOOR, **ser.validated_data
        )
        return self._render(center)

    @extend_schema(
        request=s.CertificateRequestSerializer, responses={201: s.IssuedCertificateSerializer}
    )
    @action(detail=True, methods=["post"])
    def certificate(self, request: Request, national_id: str) -> Response:
        """Issue (or renew) the center's agent certificate from a CSR; the key stays with the
        agent. Answers the certificate and the authority's bundle (docs/tls.md)."""
        center = self.get_object()
        ser = s.CertificateRequestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        row, bundle = certificates.center_certificate_issue(
            center=center, actor=request.user, csr_pem=ser.validated_data["csr"], door=DOOR
        )
        issued = s.IssuedCertificateSerializer(row, context={"ca": bundle.decode()})
        return Response(issued.data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.CertificateRevokeSerializer, responses=s.AgentCertificateSerializer)
    @action(detail=True, methods=["post"], url_path="revoke-certificate")
    def revoke_certificate(self, request: Request, national_id: str) -> Response:
        """Revoke one of the center's agent certificates by serial."""
        center = self.get_object()
        ser = s.CertificateRevokeSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        row = get_object_or_404(center.certificates.all(), serial=ser.validated_data["serial"])
        row = certificates.certificate_revoke(
            certificate=row, actor=request.user, reason=ser.validated_data["reason"], door=DOOR
        )
        return Response(s.AgentCertificateSerializer(row).data)


class PoolViewSet(viewsets.ModelViewSet[Pool]):
    """Resource pools. Operators declare and change their own; everyone reads listed ones."""

    lookup_field = "national_id"
    permission_classes = [OperatorWritePermission]
    filterset_class = PoolFilterSet
    search_fields = ["name", "national_id", "accelerator__model", "center__name"]
    ordering_fields = [
        "national_id",
        "accelerators",
        "price_per_accelerator_hour",
        "measured_tflops_per_accelerator",
        "created_at",
    ]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Pool]:
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            qs = selectors.pools_visible_to(self.request.user)
        else:
            qs = selectors.pools_editable_by(self.request.user)
        return qs.prefetch_related("traits")

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action in ("create", "partial_update"):
            return s.PoolWriteSerializer
        if self.action == "transition":
            return s.TransitionSerializer
        return s.PoolSerializer

    def _render(self, pool: Pool, code: int = status.HTTP_200_OK) -> Response:
        pool = (
            Pool.objects.select_related("center__operator", "center__cluster__hub", "accelerator")
            .prefetch_related("traits")
            .get(pk=pool.pk)
        )
        return Response(s.PoolSerializer(pool, context={"request": self.request}).data, status=code)

    @extend_schema(responses=s.PoolSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        data.pop("version", None)
        center, traits = data.pop("center"), data.pop("traits", None)
        pool = services.pool_create(
            actor=request.user, door=DOOR, center=center, data=data, traits=traits
        )
        return self._render(pool, status.HTTP_201_CREATED)

    @extend_schema(responses=s.PoolSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        pool = self.get_object()
        ser = self.get_serializer(pool, data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        version, traits = data.pop("version", None), data.pop("traits", None)
        pool = services.pool_update(
            pool=pool,
            actor=request.user,
            door=DOOR,
            data=data,
            traits=traits,
            expected_version=version,
        )
        return self._render(pool)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.pool_delete(pool=self.get_object(), actor=request.user, door=DOOR)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=s.PoolSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request: Request, national_id: str) -> Response:
        """Submit the pool for verification (queued when the request commits)."""
        pool = services.pool_submit(pool=self.get_object(), actor=request.user, door=DOOR)
        return self._render(pool)

    @extend_schema(responses=s.PoolSerializer)
    @action(detail=True, methods=["post"])
    def transition(self, request: Request, national_id: str) -> Response:
        """Ask for a lifecycle move (retire, withdraw; suspend for platform staff)."""
        ser = s.TransitionSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        pool = services.pool_request_transition(
            pool=self.get_object(), actor=request.user, door=DOOR, **ser.validated_data
        )
        return self._render(pool)


class ChangeRecordViewSet(viewsets.ReadOnlyModelViewSet[ChangeRecord]):
    """The change log of the caller's own objects (platform staff see all)."""

    serializer_class = s.ChangeRecordSerializer
    permission_classes = [IsAuthenticated]
    filterset_class = ChangeRecordFilterSet
    ordering_fields = ["time"]

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.changes_visible_to(self.request.user)


class TokenThrottle(UserRateThrottle):
    scope = "tokens"

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[ApiToken],
):
    """The caller's API tokens. ``POST`` shows the token once; ``DELETE`` revokes it."""

    serializer_class = s.ApiTokenSerializer
    permission_classes = [IsAuthenticated]
    lookup_field = "key_id"
    throttle_classes = [TokenThrottle]

    def get_queryset(self) -> QuerySet[ApiToken]:
        return selectors.tokens_of(self.request.user)

    @extend_schema(responses=s.ApiTokenCreatedSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = s.ApiTokenSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        row, token = services.token_create(user=request.user, name=ser.validated_data["name"])
        created = s.ApiTokenCreatedSerializer(row, context={"token": token})
        return Response(created.data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.token_revoke(token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class SummaryView(APIView):
    """National capacity by hub, accelerator model and vendor origin, with the verified share."""

    permission_classes = [AllowAny]

    @extend_schema(responses=s.SummarySerializer)
    def get(self, request: Request) -> Response:
        return Response(s.SummarySerializer(selectors.national_summary()).data)


class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[WebhookSubscription],
):
    """The organization's webhook subscriptions (admins). Payloads are HMAC-SHA256 signed."""

    serializer_class = s.WebhookSubscriptionCreatedSerializer
    permission_classes = [IsAuthenticated, OrgAdminPermission]

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.webhooks_of(self.request.user)

    @extend_schema(responses=s.WebhookSubscriptionCreatedSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = s.WebhookSubscriptionSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        organization = selectors.organization_of(request.user)
        if organization is None:  # OrgAdminPermission lets only members of one through
            raise PermissionDenied("Authenticate as a member of an organization.")
        sub = webhooks.webhook_subscribe(
            organization=organization,
            actor=request.user,
            door=DOOR,
            **ser.validated_data,
        )
        return Response(s.WebhookSubscriptionCreatedSerializer(sub).data, status=201)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        webhooks.webhook_delete(subscription=self.get_object(), actor=request.user, door=DOOR)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryViewSet(viewsets.ReadOnlyModelViewSet[WebhookDelivery]):
    """The delivery log of the organization's webhooks."""

    serializer_class = s.WebhookDeliverySerializer
    permission_classes = [IsAuthenticated, OrgAdminPermission]
    filterset_fields = ["state", "event"]

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.webhook_deliveries_of(self.request.user)
