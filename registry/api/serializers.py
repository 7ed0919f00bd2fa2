"""REST serializers: shape validation only. Domain rules live in ``registry.services``."""

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry import selectors
from registry.choices import Status
from registry.models import (
    Accelerator,
    AgentCertificate,
    ApiToken,
    Center,
    ChangeRecord,
    Cluster,
    Hub,
    HubLink,
    Organization,
    Pool,
    Trait,
    WebhookDelivery,
    WebhookSubscription,
)

_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def validate_agent_endpoint(value: str) -> None:
    """``host:port`` with a port in 1-65535 (where the agent's gRPC server listens)."""
    if value == "":
        return
    match = _ENDPOINT.match(value)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise serializers.ValidationError("Expected host:port with a port between 1 and 65535.")


class HubSerializer(serializers.ModelSerializer[Hub]):
    clusters: serializers.SlugRelatedField[Cluster] = serializers.SlugRelatedField(
        slug_field="code", many=True, read_only=True
    )

    class Meta:
        model = Hub
        fields = ["code", "name", "region", "latitude", "longitude", "description", "clusters"]


class ClusterSerializer(serializers.ModelSerializer[Cluster]):
    hub: serializers.SlugRelatedField[Hub] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )

    class Meta:
        model = Cluster
        fields = ["code", "name", "hub", "province", "latitude", "longitude"]


class HubLinkSerializer(serializers.ModelSerializer[HubLink]):
    a: serializers.SlugRelatedField[Hub] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    b: serializers.SlugRelatedField[Hub] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )

    class Meta:
        model = HubLink
        fields = ["a", "b", "latency_ms", "bandwidth_gbps", "source", "measured_at"]


class AcceleratorSerializer(serializers.ModelSerializer[Accelerator]):
    a100_equivalent = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Accelerator
        fields = [
            "slug",
            "vendor",
            "model",
            "origin",
            "memory_gb",
            "memory_bandwidth_gbps",
            "bf16_dense_tflops",
            "fp16_dense_tflops",
            "fp32_tflops",
            "interconnect",
            "interconnect_bandwidth_gbps",
            "tdp_watts",
            "a100_equivalent",
            "sources",
            "notes",
        ]


class OrganizationSerializer(serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = ["slug", "name", "kind", "created_at"]


class CenterSerializer(serializers.ModelSerializer[Center]):
    """A center as its readers see it; the agent endpoint only for its operator and staff."""

    operator: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    cluster: serializers.SlugRelatedField[Cluster] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    hub = serializers.CharField(source="cluster.hub.code", read_only=True)
    agent_endpoint = serializers.SerializerMethodField()

    class Meta:
        model = Center
        fields = [
            "national_id",
            "name",
            "operator",
            "hub",
            "cluster",
            "latitude",
            "longitude",
            "pue",
            "green_power_share",
            "agent_endpoint",
            "status",
            "status_reason",
            "status_changed_at",
            "version",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_agent_endpoint(self, obj: Center) -> str | None:
        request = self.context.get("request")
        user = getattr(request, "user", None)
        if selectors.is_platform_staff(user) or selectors.organization_of(user) == obj.operator:
            return obj.agent_endpoint
        return None


class CenterWriteSerializer(serializers.ModelSerializer[Center]):
    cluster = serializers.SlugRelatedField(slug_field="code", queryset=Cluster.objects.all())
    agent_endpoint = serializers.CharField(
        max_length=255, required=False, allow_blank=True, validators=[validate_agent_endpoint]
    )
    version = serializers.IntegerField(
        required=False, write_only=True, help_text="Expected version (optimistic concurrency)."
    )

    class Meta:
        model = Center
        fields = [
            "name",
            "cluster",
            "latitude",
            "longitude",
            "pue",
            "green_power_share",
            "agent_endpoint",
            "version",
        ]
        # Uniqueness per operator is checked by the service (the operator is not a field here).
        validators: list[Any] = []


class PoolSerializer(serializers.ModelSerializer[Pool]):
    center: serializers.SlugRelatedField[Center] = serializers.SlugRelatedField(
        slug_field="national_id", read_only=True
    )
    accelerator: serializers.SlugRelatedField[Accelerator] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    operator = serializers.CharField(source="center.operator.slug", read_only=True)
    hub = serializers.CharField(source="center.cluster.hub.code", read_only=True)
    cluster = serializers.CharField(source="center.cluster.code", read_only=True)
    traits: serializers.SlugRelatedField[Trait] = serializers.SlugRelatedField(
        slug_field="slug", many=True, read_only=True
    )
    a100_equivalents = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Pool
        fields = [
            "national_id",
            "name",
            "center",
            "operator",
            "hub",
            "cluster",
            "accelerator",
            "accelerators_per_node",
            "nodes",
            "accelerators",
            "a100_equivalents",
            "intra_node_interconnect",
            "intra_node_bandwidth_gbps",
            "inter_node_interconnect",
            "inter_node_bandwidth_gbps",
            "price_per_accelerator_hour",
            "currency",
            "spot_discount_percent",
            "declared_tflops_per_accelerator",
            "declared_precision",
            "measured_tflops_per_accelerator",
            "verified_at",
            "traits",
            "status",
            "status_reason",
            "status_changed_at",
            "version",
            "created_at",
            "updated_at",
        ]


class PoolWriteSerializer(serializers.ModelSerializer[Pool]):
    center = serializers.SlugRelatedField(slug_field="national_id", queryset=Center.objects.none())
    accelerator = serializers.SlugRelatedField(
        slug_field="slug", queryset=Accelerator.objects.all()
    )
    traits = serializers.ListField(
        child=serializers.SlugField(max_length=40), required=False, max_length=32
    )
    currency = serializers.RegexField(
        r"^[A-Z]{3}$",
        required=False,
        allow_blank=True,
        error_messages={"invalid": "Use an ISO 4217 code such as CNY."},
    )
    version = serializers.IntegerField(
        required=False, write_only=True, help_text="Expected version (optimistic concurrency)."
    )

    class Meta:
        model = Pool
        fields = [
            "center",
            "name",
            "accelerator",
            "accelerators_per_node",
            "nodes",
            "intra_node_interconnect",
            "intra_node_bandwidth_gbps",
            "inter_node_interconnect",
            "inter_node_bandwidth_gbps",
            "price_per_accelerator_hour",
            "currency",
            "spot_discount_percent",
            "declared_tflops_per_accelerator",
            "declared_precision",
            "traits",
            "version",
        ]
        validators: list[Any] = []
        extra_kwargs = {
            "accelerators_per_node": {"min_value": 1},
            "nodes": {"min_value": 1},
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        # Only the actor's own centers can be named: a foreign one reads as unknown.
        center = self.fields["center"]
        assert isinstance(center, serializers.RelatedField)
        center.queryset = selectors.centers_editable_by(getattr(request, "user", None))
        if self.instance is not None:
            self.fields["center"].read_only = True


class CertificateRequestSerializer(serializers.Serializer[None]):
    csr = serializers.CharField(
        max_length=16 * 1024, trim_whitespace=False, help_text="PEM certificate signing request"
    )


class CertificateRevokeSerializer(serializers.Serializer[None]):
    serial = serializers.RegexField(r"^[0-9a-f]{1,40}$", help_text="hex serial of the certificate")
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class AgentCertificateSerializer(serializers.Serializer[AgentCertificate]):
    center = serializers.CharField(source="center.national_id")
    serial = serializers.CharField()
    identity = serializers.SerializerMethodField()
    fingerprint_sha256 = serializers.CharField()
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    revocation_reason = serializers.CharField()
    certificate = serializers.CharField(source="certificate_pem")

    def get_identity(self, obj: Any) -> str:
        return f"spiffe://interconnect.cn/center/{obj.center.national_id}"


class IssuedCertificateSerializer(AgentCertificateSerializer):
    """A certificate just issued, with the authority's bundle (``context["ca"]``, PEM)."""

    ca = serializers.SerializerMethodField(help_text="the authority's bundle to trust (PEM)")

    def get_ca(self, obj: AgentCertificate) -> str:
        return str(self.context["ca"])


class TransitionSerializer(serializers.Serializer[None]):
    to = serializers.ChoiceField(choices=Status.choices)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class ChangeRecordSerializer(serializers.ModelSerializer[ChangeRecord]):
    actor = serializers.CharField(source="actor.username", read_only=True, allow_null=True)

    class Meta:
        model = ChangeRecord
        fields = [
            "id",
            "time",
            "actor",
            "door",
            "request_id",
            "object_type",
            "object_key",
            "object_repr",
            "action",
            "before",
            "after",
        ]


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    class Meta:
        model = ApiToken
        fields = ["key_id", "name", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = ["key_id", "created_at", "last_used_at", "revoked_at"]


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    """A token just made, with its secret (``context["token"]``), shown this once."""

    token = serializers.SerializerMethodField(help_text="Shown once; store it now.")

    def get_token(self, obj: ApiToken) -> str:
        return str(self.context["token"])

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class CapacityRowSerializer(serializers.Serializer[dict[str, Any]]):
    pools = serializers.IntegerField()
    accelerators = serializers.IntegerField()
    verified_accelerators = serializers.IntegerField()
    verified_share = serializers.FloatField()
    a100_equivalents = serializers.FloatField()


class HubCapacitySerializer(CapacityRowSerializer):
    hub = serializers.CharField()
    hub_name = serializers.CharField()


class ModelCapacitySerializer(CapacityRowSerializer):
    accelerator = serializers.CharField()


class OriginCapacitySerializer(CapacityRowSerializer):
    origin = serializers.CharField()


class TotalsSerializer(serializers.Serializer[dict[str, Any]]):
    pools = serializers.IntegerField()
    accelerators = serializers.IntegerField()
    verified_accelerators = serializers.IntegerField()
    verified_share = serializers.FloatField()


class SummarySerializer(serializers.Serializer[dict[str, Any]]):
    totals = TotalsSerializer()
    centers = serializers.IntegerField()
    by_hub = HubCapacitySerializer(many=True)
    by_accelerator = ModelCapacitySerializer(many=True)
    by_origin = OriginCapacitySerializer(many=True)


class WebhookSubscriptionSerializer(serializers.ModelSerializer[WebhookSubscription]):
    events = serializers.ListField(child=serializers.CharField(max_length=40), required=False)

    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "events", "active", "created_at"]
        read_only_fields = ["id", "active", "created_at"]


class WebhookSubscriptionCreatedSerializer(WebhookSubscriptionSerializer):
    secret = serializers.CharField(read_only=True, help_text="HMAC-SHA256 signing secret.")

    class Meta(WebhookSubscriptionSerializer.Meta):
        fields = [*WebhookSubscriptionSerializer.Meta.fields, "secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "subscription",
            "event_id",
            "event",
            "payload",
            "state",
            "attempts",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at",
        ]
