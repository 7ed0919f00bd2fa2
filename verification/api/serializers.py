"""Shapes of verification's REST resources. Pools and centers appear by national id."""

from typing import Any

from rest_framework import serializers

from registry import selectors as registry_selectors
from registry.models import Center, Pool
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun
from verification.selectors import DayAvailability


class VerificationRunSerializer(serializers.ModelSerializer[VerificationRun]):
    """A run with its evidence. ``next_due_at``, when the platform will test the pool again
    unannounced, is for platform staff only (null for the operator: a center that knew it would
    only need the hardware around that time); pass ``context={"request": ...}``."""

    pool: serializers.SlugRelatedField[Pool] = serializers.SlugRelatedField(
        slug_field="national_id", read_only=True
    )

    def to_representation(self, instance: VerificationRun) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        request = self.context.get("request")
        if not registry_selectors.is_platform_staff(getattr(request, "user", None)):
            data["next_due_at"] = None
        return data

    class Meta:
        model = VerificationRun
        fields = [
            "run_id",
            "pool",
            "trigger",
            "state",
            "created_at",
            "attempts",
            "started_at",
            "finished_at",
            "verdict_reason",
            "next_due_at",
            "agent_endpoint",
            "agent_id",
            "seed",
            "n",
            "dtype",
            "steps",
            "k",
            "time_scale",
            "rtt_ms",
            "wall_seconds",
            "measured_tflops_per_accelerator",
            "declared_tflops_per_accelerator",
            "peak_tflops_per_accelerator",
            "tolerance",
            "drift",
            "freivalds",
            "devices",
            "sample",
            "inventory_match",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "next_due_at": {"help_text": "Next scheduled re-verification: platform staff only."}
        }


class HeartbeatSerializer(serializers.ModelSerializer[Heartbeat]):
    pool: serializers.SlugRelatedField[Pool] = serializers.SlugRelatedField(
        slug_field="national_id", read_only=True
    )

    class Meta:
        model = Heartbeat
        fields = [
            "pool",
            "time",
            "sent_at",
            "agent_id",
            "utilization",
            "accelerators_healthy",
            "accelerators_busy",
        ]
        read_only_fields = fields


class ScheduledDowntimeSerializer(serializers.ModelSerializer[ScheduledDowntime]):
    """A downtime names a pool or a center by national id; which ones exist for the caller is
    decided by the service (an unknown or foreign one is a 400 on its field)."""

    pool = serializers.SlugRelatedField(
        slug_field="national_id", queryset=Pool.objects.all(), required=False, allow_null=True
    )
    center = serializers.SlugRelatedField(
        slug_field="national_id", queryset=Center.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = ScheduledDowntime
        fields = ["id", "pool", "center", "start", "end", "reason", "created_at"]
        read_only_fields = ["id", "created_at"]

    def to_internal_value(self, data: Any) -> Any:
        # A foreign national id must read like a missing one: "Unknown pool." either way.
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {}
            for name in ("pool", "center"):
                if name in detail:
                    detail[name] = [
                        serializers.ErrorDetail(f"Unknown {name}.", code="does_not_exist")
                    ]
            raise


class AvailabilityQuerySerializer(serializers.Serializer[None]):
    pool = serializers.CharField()
    days = serializers.IntegerField(min_value=1, max_value=90, default=7)


class DayAvailabilitySerializer(serializers.Serializer[DayAvailability]):
    date = serializers.DateField()
    known_seconds = serializers.FloatField()
    up_seconds = serializers.FloatField()
    availability = serializers.FloatField(allow_null=True)
    scheduled_downtime_seconds = serializers.FloatField()
    reliability = serializers.FloatField(allow_null=True)
    heartbeats = serializers.IntegerField()
    mean_utilization = serializers.FloatField(allow_null=True)


class AvailabilitySerializer(serializers.Serializer[dict[str, Any]]):
    """A pool's availability: one entry per UTC day, oldest first."""

    pool = serializers.CharField(help_text="pool national id")
    days = DayAvailabilitySerializer(many=True)
