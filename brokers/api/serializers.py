"""REST serializers of the broker: shape validation only. Rules live in ``brokers.services``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from brokers import limits, selectors
from brokers.choices import BookingClassSlug, LatencyClass, OfferStatus
from brokers.models import Allocation, Booking, BookingClass, BookingEvent, Quota
from brokers.placement import WorkloadSpec
from brokers.placement.spec import (
    OptionPart,
    PlacementOption,
    PlacementResult,
    Preemption,
    Rejection,
    past_start_error,
)


def slugs() -> serializers.ListField:
    """A list of names; a new field each time (one instance shared by several fields binds
    them all to the first field's name: ``hubs_allowed`` used to land in ``traits``)."""
    return serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, max_length=32
    )


class WorkloadSpecSerializer(serializers.Serializer[None]):
    """A workload specification (see ``brokers.placement.spec.WorkloadSpec``)."""

    accelerator_model = serializers.CharField(max_length=60, required=False, allow_blank=True)
    count = serializers.IntegerField(
        min_value=0,
        max_value=limits.MAX_ACCELERATORS,
        required=False,
        default=0,
        error_messages={"min_value": limits.COUNT_MESSAGE, "max_value": limits.COUNT_MESSAGE},
    )
    a100_equivalents = serializers.FloatField(
        min_value=0, max_value=100_000, required=False, default=0.0
    )
    gang_size = serializers.IntegerField(min_value=1, max_value=100_000, required=False, default=1)
    min_accelerators_per_node = serializers.IntegerField(
        min_value=0, max_value=100_000, required=False, default=0
    )
    interconnect = serializers.CharField(max_length=40, required=False, allow_blank=True)
    traits = slugs()
    memory_gb_per_accelerator = serializers.FloatField(
        min_value=0, max_value=100_000, required=False, default=0.0
    )
    earliest_start = serializers.DateTimeField(required=False, allow_null=True)
    latest_end = serializers.DateTimeField(required=False, allow_null=True)
    duration_seconds = serializers.FloatField(
        min_value=limits.MIN_DURATION_SECONDS,
        max_value=limits.MAX_DURATION_SECONDS,
        required=False,
        default=limits.DEFAULT_DURATION_SECONDS,
        error_messages={
            "min_value": limits.DURATION_MESSAGE,
            "max_value": limits.DURATION_MESSAGE,
        },
    )
    hubs_allowed = slugs()
    hubs_excluded = slugs()
    centers_excluded = slugs()
    data_hub = serializers.CharField(max_length=8, required=False, allow_blank=True)
    data_gb = serializers.FloatField(min_value=0, max_value=1e9, required=False, default=0.0)
    latency_class = serializers.ChoiceField(
        choices=LatencyClass.choices, required=False, default=LatencyClass.TRAINING
    )
    price_cap = serializers.DecimalField(
        max_digits=10, decimal_places=4, required=False, allow_null=True, min_value=0
    )
    allow_split = serializers.BooleanField(required=False, default=False)
    max_centers = serializers.IntegerField(min_value=1, max_value=64, required=False, default=1)
    image = serializers.CharField(max_length=200, required=False, allow_blank=True)
    command = serializers.CharField(max_length=1000, required=False, allow_blank=True)
    booking_class = serializers.ChoiceField(
        choices=BookingClassSlug.choices,
        required=False,
        default=BookingClassSlug.RESERVED,
        help_text="reserved (never preempted), spot (cheaper, may be preempted) or priority.",
    )
    replace_on_preemption = serializers.BooleanField(
        required=False, default=False, help_text="Spot only: book it again if preempted."
    )

    def validate_earliest_start(self, value: dt.datetime | None) -> dt.datetime | None:
        # The service's rule and message (WorkloadSpec.validated says the same).
        error = past_start_error(value, now=timezone.now())
        if error:
            raise serializers.ValidationError(error)
        return value

    def to_spec(self) -> WorkloadSpec:
        data = dict(self.validated_data)
        data["duration"] = dt.timedelta(seconds=data.pop("duration_seconds"))
        for key in ("traits", "hubs_allowed", "hubs_excluded", "centers_excluded"):
            data[key] = tuple(data.get(key) or ())
        return WorkloadSpec(**data)


class PlacementRequestSerializer(WorkloadSpecSerializer):
    max_options = serializers.IntegerField(min_value=1, max_value=20, required=False, default=5)
    explain = serializers.BooleanField(required=False, default=True)

    def to_spec(self) -> WorkloadSpec:
        self.validated_data.pop("max_options", None)
        self.validated_data.pop("explain", None)
        return super().to_spec()


class OptionPartSerializer(serializers.Serializer[None]):
    pool = serializers.CharField(max_length=40)
    accelerators = serializers.IntegerField(min_value=1)


class BookingCreateSerializer(serializers.Serializer[None]):
    spec = WorkloadSpecSerializer()
    idempotency_key = serializers.CharField(max_length=100, required=False)
    option = OptionPartSerializer(many=True, required=False)
    hold = serializers.BooleanField(
        required=False, default=False, help_text="Hold the capacity until confirmed."
    )


class AllocationSerializer(serializers.ModelSerializer[Allocation]):
    pool = serializers.CharField(source="pool.national_id")
    center = serializers.CharField(source="pool.center.national_id")

    class Meta:
        model = Allocation
        fields = [
            "pool",
            "center",
            "accelerators",
            "start",
            "end",
            "price_per_accelerator_hour",
            "workload_state",
        ]


class BookingEventSerializer(serializers.ModelSerializer[BookingEvent]):
    class Meta:
        model = BookingEvent
        fields = ["id", "time", "kind", "status", "message", "data"]


class BookingSerializer(serializers.ModelSerializer[Booking]):
    """A booking; the specification only for the booking firm and the platform."""

    organization = serializers.CharField(source="organization.slug")
    allocations = AllocationSerializer(many=True, read_only=True)
    replaced_by = serializers.CharField(
        source="replaced_by.national_id", allow_null=True, default=None
    )
    spec = serializers.SerializerMethodField()
    idempotency_key = serializers.SerializerMethodField()

    class Meta:
        model = Booking
        fields = [
            "national_id",
            "organization",
            "status",
            "status_reason",
            "window_start",
            "window_end",
            "accelerators",
            "estimated_cost",
            "currency",
            "flagged_reason",
            "hold_expires_at",
            "booking_class",
            "replace_on_preemption",
            "replaced_by",
            "idempotency_key",
            "spec",
            "allocations",
            "created_at",
        ]

    def _owner_view(self, obj: Booking) -> bool:
        return selectors.may_see_spec(getattr(self.context.get("request"), "user", None), obj)

    def get_spec(self, obj: Booking) -> dict[str, Any] | None:
        return obj.spec if self._owner_view(obj) else None

    def get_idempotency_key(self, obj: Booking) -> str | None:
        return obj.idempotency_key if self._owner_view(obj) else None


class QuotaSerializer(serializers.Serializer[Quota]):
    organization = serializers.CharField(source="organization.slug", read_only=True)
    max_concurrent_accelerators = serializers.IntegerField(
        min_value=0, max_value=1_000_000_000, allow_null=True
    )
    max_accelerator_hours_per_month = serializers.IntegerField(
        min_value=0, max_value=1_000_000_000, allow_null=True
    )


class CapacityQuerySerializer(serializers.Serializer[None]):
    """Query parameters of ``GET /api/v1/capacity/``."""

    accelerator = serializers.CharField(max_length=60, required=False, default="")
    hub = serializers.CharField(max_length=8, required=False, default="")
    cluster = serializers.CharField(max_length=8, required=False, default="")
    interconnect = serializers.CharField(max_length=40, required=False, default="")
    max_price = serializers.DecimalField(
        max_digits=10, decimal_places=4, min_value=0, required=False, allow_null=True, default=None
    )
    start = serializers.DateTimeField(required=False, allow_null=True, default=None)
    end = serializers.DateTimeField(required=False, allow_null=True, default=None)
    page_size = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=100)
    page_token = serializers.CharField(max_length=40, required=False, default="")


class CapacityRowSerializer(serializers.Serializer[dict[str, Any]]):
    pool = serializers.CharField()
    center = serializers.CharField()
    hub = serializers.CharField()
    cluster = serializers.CharField()
    accelerator = serializers.CharField()
    accelerators = serializers.IntegerField()
    free = serializers.IntegerField()
    price_per_accelerator_hour = serializers.CharField(allow_null=True)
    currency = serializers.CharField(allow_blank=True)
    intra_node_interconnect = serializers.CharField(allow_blank=True)
    inter_node_interconnect = serializers.CharField(allow_blank=True)
    green_power_share = serializers.FloatField()
    a100_equivalent_per_accelerator = serializers.FloatField()
    spot_price_per_accelerator_hour = serializers.CharField(allow_null=True)


class OfferPartSerializer(serializers.Serializer[dict[str, Any]]):
    pool = serializers.CharField()
    accelerators = serializers.IntegerField()


class OfferSerializer(serializers.Serializer[dict[str, Any]]):
    """A resale offer as the caller may see it (``brokers.market.offer_view``)."""

    offer_id = serializers.CharField()
    status = serializers.ChoiceField(choices=OfferStatus.choices)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    accelerators = serializers.IntegerField()
    price = serializers.DecimalField(max_digits=14, decimal_places=2)
    currency = serializers.CharField(allow_blank=True)
    expires_at = serializers.DateTimeField()
    parts = OfferPartSerializer(many=True)
    booking_id = serializers.CharField(allow_blank=True, help_text="Only for the seller.")
    bought_booking_id = serializers.CharField(allow_blank=True, help_text="Only for the buyer.")
    mine = serializers.BooleanField()


class OfferCreateSerializer(serializers.Serializer[None]):
    price = serializers.CharField(
        max_length=40, help_text="Price for all of it, a decimal that is not negative: 120.00."
    )
    start = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="Offer only the part from here."
    )


class OfferBuySerializer(serializers.Serializer[None]):
    image = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    command = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class BookingClassSerializer(serializers.ModelSerializer[BookingClass]):
    class Meta:
        model = BookingClass
        fields = ["slug", "name", "description", "preemptible", "preempts", "needs_grant"]


class PriorityGrantSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.CharField(read_only=True)
    accelerator_hours = serializers.IntegerField(
        min_value=0, max_value=1_000_000_000, allow_null=True
    )


class CapacityPageSerializer(serializers.Serializer[dict[str, Any]]):
    results = CapacityRowSerializer(many=True)
    next_page_token = serializers.CharField(allow_blank=True)
    offers = OfferSerializer(many=True)


class OptionPartOutSerializer(serializers.Serializer[OptionPart]):
    pool = serializers.CharField()
    center = serializers.CharField()
    hub = serializers.CharField()
    accelerator = serializers.CharField()
    accelerators = serializers.IntegerField()
    price_per_accelerator_hour = serializers.CharField(allow_null=True)
    currency = serializers.CharField(allow_blank=True)


class PreemptionSerializer(serializers.Serializer[Preemption]):
    pool = serializers.CharField()
    bookings = serializers.IntegerField()
    accelerators = serializers.IntegerField()


class PlacementOptionSerializer(serializers.Serializer[PlacementOption]):
    parts = OptionPartOutSerializer(many=True)
    accelerators = serializers.IntegerField()
    score = serializers.FloatField()
    cost = serializers.CharField()
    currency = serializers.CharField(allow_blank=True)
    transfer_seconds = serializers.FloatField()
    green_power_share = serializers.FloatField()
    explanation = serializers.ListField(child=serializers.CharField())
    preemptions = PreemptionSerializer(many=True)
    offer = serializers.CharField(allow_blank=True, help_text="A resale offer: buy it by id.")


class RejectionSerializer(serializers.Serializer[Rejection]):
    pool = serializers.CharField()
    reason_code = serializers.CharField()
    detail = serializers.CharField()


class PlacementSerializer(serializers.Serializer[PlacementResult]):
    options = PlacementOptionSerializer(many=True)
    rejections = RejectionSerializer(many=True)
    prefiltered = serializers.DictField(child=serializers.IntegerField())
    candidates_considered = serializers.IntegerField()


class UsageMonthSerializer(serializers.Serializer[dict[str, Any]]):
    month = serializers.CharField()
    currency = serializers.CharField(allow_blank=True)
    accelerator_hours = serializers.CharField()
    cost = serializers.CharField()


class UsageSerializer(serializers.Serializer[dict[str, Any]]):
    organization = serializers.CharField()
    months = UsageMonthSerializer(many=True)


class EventsQuerySerializer(serializers.Serializer[None]):
    after = serializers.IntegerField(min_value=0, max_value=2**62, required=False, default=0)
