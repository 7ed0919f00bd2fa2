"""Filters of verification's REST lists; pools and centers are named by national id."""

import django_filters

from verification.choices import RunState, Trigger
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun


class VerificationRunFilterSet(django_filters.FilterSet):
    pool = django_filters.CharFilter(field_name="pool__national_id")
    state = django_filters.MultipleChoiceFilter(choices=RunState.choices)
    trigger = django_filters.MultipleChoiceFilter(choices=Trigger.choices)

    class Meta:
        model = VerificationRun
        fields = ["pool", "state", "trigger"]


class HeartbeatFilterSet(django_filters.FilterSet):
    pool = django_filters.CharFilter(field_name="pool__national_id")
    since = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte")

    class Meta:
        model = Heartbeat
        fields = ["pool", "since"]


class ScheduledDowntimeFilterSet(django_filters.FilterSet):
    pool = django_filters.CharFilter(field_name="pool__national_id")
    center = django_filters.CharFilter(field_name="center__national_id")

    class Meta:
        model = ScheduledDowntime
        fields = ["pool", "center"]
