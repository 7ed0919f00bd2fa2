"""django-filter FilterSets for the broker's list endpoints (NetBox style)."""

import datetime as dt

import django_filters as filters
from django.db.models import QuerySet

from brokers.choices import BookingStatus
from brokers.models import Booking


class BookingFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=BookingStatus.choices)
    pool = filters.CharFilter(field_name="allocations__pool__national_id", distinct=True)
    starts_after = filters.IsoDateTimeFilter(method="_window_start", lookup_expr="gte")
    starts_before = filters.IsoDateTimeFilter(method="_window_start", lookup_expr="lt")

    class Meta:
        model = Booking
        fields = ["status"]

    def _window_start(
        self, queryset: QuerySet[Booking], name: str, value: dt.datetime
    ) -> QuerySet[Booking]:
        # In UTC: PostgreSQL refuses offsets beyond +-15:59, which ISO 8601 allows.
        lookup = "gte" if name == "starts_after" else "lt"
        return queryset.filter(**{f"window_start__{lookup}": value.astimezone(dt.UTC)})
