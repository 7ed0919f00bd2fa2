"""Portal forms of the broker: shape only. ``WorkloadSpec.validated`` and the booking services
check the rules, and their ``ValidationError`` lands on these forms' fields."""

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import timezone

from brokers import limits
from brokers.choices import BookingClassSlug, LatencyClass
from brokers.placement import WorkloadSpec
from brokers.placement.spec import past_start_error
from registry.forms import choice_field
from registry.models import Accelerator, Hub

DATETIME_LOCAL = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


def _tags(raw: str) -> tuple[str, ...]:
    return tuple(sorted({t.strip().lower() for t in raw.split(",") if t.strip()}))


class WorkloadForm(forms.Form):
    """A workload to place: a model and a count, or any model worth N A100-equivalents."""

    accelerator_model = forms.ChoiceField(required=False, label="Accelerator model")
    count = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=limits.MAX_ACCELERATORS,
        help_text="With a model.",
        error_messages={"min_value": limits.COUNT_MESSAGE, "max_value": limits.COUNT_MESSAGE},
    )
    a100_equivalents = forms.FloatField(
        required=False, min_value=0, label="Or A100-equivalents", help_text="Any model."
    )
    gang_size = forms.IntegerField(
        min_value=1, initial=1, help_text="Accelerators that must start together on one pool."
    )
    earliest_start = forms.DateTimeField(
        required=False, widget=DATETIME_LOCAL, help_text="UTC; empty: now."
    )
    duration_hours = forms.FloatField(min_value=0.0, initial=1, label="Duration (hours)")
    interconnect = forms.CharField(required=False, help_text="e.g. infiniband, nvlink")
    traits = forms.CharField(required=False, help_text="Comma-separated, e.g. rdma, fp8")
    hubs_allowed = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Hubs allowed (none: any)"
    )
    data_hub = forms.ChoiceField(required=False, label="Where the data lives")
    data_gb = forms.FloatField(required=False, min_value=0, initial=0, label="Data size (GB)")
    latency_class = forms.ChoiceField(choices=LatencyClass.choices, initial=LatencyClass.TRAINING)
    price_cap = forms.DecimalField(
        required=False, min_value=0, decimal_places=4, label="Price cap / acc·h"
    )
    allow_split = forms.BooleanField(required=False, label="May split across centers")
    max_centers = forms.IntegerField(min_value=1, initial=1)
    booking_class = forms.ChoiceField(
        choices=BookingClassSlug.choices,
        initial=BookingClassSlug.RESERVED,
        required=False,
        label="Class",
        help_text="Spot: cheaper, may be preempted.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "accelerator_model").choices = [("", "any (use A100-equivalents)")] + [
            (a.slug, str(a)) for a in Accelerator.objects.all()
        ]
        hubs = [(h.code, h.name) for h in Hub.objects.all()]
        choice_field(self, "hubs_allowed").choices = hubs
        choice_field(self, "data_hub").choices = [("", "unspecified"), *hubs]

    def clean_earliest_start(self) -> dt.datetime | None:
        value = self.cleaned_data.get("earliest_start")
        # The service's rule and message (WorkloadSpec.validated says the same).
        error = past_start_error(value, now=timezone.now())
        if error:
            raise forms.ValidationError(error)
        return value

    def to_spec(self) -> WorkloadSpec:
        data = self.cleaned_data
        return WorkloadSpec(
            accelerator_model=data.get("accelerator_model") or "",
            count=data.get("count") or 0,
            a100_equivalents=data.get("a100_equivalents") or 0.0,
            gang_size=data.get("gang_size") or 1,
            earliest_start=data.get("earliest_start"),
            duration=dt.timedelta(hours=data.get("duration_hours") or 0),
            interconnect=data.get("interconnect") or "",
            traits=_tags(data.get("traits") or ""),
            hubs_allowed=tuple(data.get("hubs_allowed") or ()),
            data_hub=data.get("data_hub") or "",
            data_gb=data.get("data_gb") or 0.0,
            latency_class=data.get("latency_class") or LatencyClass.TRAINING,
            price_cap=Decimal(data["price_cap"]) if data.get("price_cap") is not None else None,
            allow_split=bool(data.get("allow_split")),
            max_centers=data.get("max_centers") or 1,
            booking_class=data.get("booking_class") or BookingClassSlug.RESERVED,
        )


# WorkloadSpec fields that the form shows under another name.
SPEC_TO_FORM_FIELD = {"duration": "duration_hours"}


class BookingForm(forms.Form):
    """Book one previewed option: the specification and the chosen parts travel as JSON; the
    service checks both again (visibility, capacity, quota)."""

    spec = forms.JSONField()
    option = forms.JSONField()
    idempotency_key = forms.CharField(max_length=100)
    back = forms.CharField(required=False, max_length=2000)

    def clean_option(self) -> list[tuple[str, int]]:
        value = self.cleaned_data["option"]
        try:
            return [(str(pool), int(n)) for pool, n in value]
        except (TypeError, ValueError):
            raise forms.ValidationError("Malformed option.") from None


class OfferForm(forms.Form):
    """Offer a booking (or its part from ``start``) for resale."""

    price = forms.CharField(max_length=40, label="Price", help_text="For all of it, e.g. 120.00.")

    def clean_price(self) -> Decimal:
        from django.core.exceptions import ValidationError

        from brokers.market import parse_price

        try:
            return parse_price(self.cleaned_data["price"])
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["price"]) from None

    start = forms.DateTimeField(
        required=False, widget=DATETIME_LOCAL, label="From (UTC; empty: all of it)"
    )


class CancelForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)


class WindowForm(forms.Form):
    """The time window over which the capacity search shows free accelerators."""

    start = forms.DateTimeField(required=False, widget=DATETIME_LOCAL, label="Free from (UTC)")
    hours = forms.FloatField(required=False, min_value=0.25, max_value=24 * 366, label="For hours")
