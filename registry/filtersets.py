"""django-filter FilterSets for the registry's list endpoints (NetBox style)."""

import django_filters as filters

from registry.choices import Origin, Status
from registry.models import Accelerator, Center, ChangeRecord, Cluster, Pool


class ClusterFilterSet(filters.FilterSet):
    hub = filters.CharFilter(field_name="hub__code", lookup_expr="iexact")

    class Meta:
        model = Cluster
        fields = ["hub"]


class AcceleratorFilterSet(filters.FilterSet):
    vendor = filters.CharFilter(lookup_expr="iexact")
    origin = filters.ChoiceFilter(choices=Origin.choices)
    min_memory_gb = filters.NumberFilter(field_name="memory_gb", lookup_expr="gte")

    class Meta:
        model = Accelerator
        fields = ["vendor", "origin"]


class CenterFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Status.choices)
    hub = filters.CharFilter(field_name="cluster__hub__code", lookup_expr="iexact")
    cluster = filters.CharFilter(field_name="cluster__code", lookup_expr="iexact")
    operator = filters.CharFilter(field_name="operator__slug")
    min_green_power_share = filters.NumberFilter(field_name="green_power_share", lookup_expr="gte")

    class Meta:
        model = Center
        fields = ["status", "hub", "cluster", "operator"]


class PoolFilterSet(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Status.choices)
    accelerator = filters.CharFilter(field_name="accelerator__slug")
    vendor = filters.CharFilter(field_name="accelerator__vendor", lookup_expr="iexact")
    origin = filters.ChoiceFilter(field_name="accelerator__origin", choices=Origin.choices)
    hub = filters.CharFilter(field_name="center__cluster__hub__code", lookup_expr="iexact")
    cluster = filters.CharFilter(field_name="center__cluster__code", lookup_expr="iexact")
    center = filters.CharFilter(field_name="center__national_id")
    operator = filters.CharFilter(field_name="center__operator__slug")
    trait = filters.CharFilter(field_name="traits__slug", distinct=True)
    min_accelerators = filters.NumberFilter(field_name="accelerators", lookup_expr="gte")
    max_price = filters.NumberFilter(field_name="price_per_accelerator_hour", lookup_expr="lte")

    class Meta:
        model = Pool
        fields = ["status", "accelerator", "hub", "cluster", "center", "operator"]


class ChangeRecordFilterSet(filters.FilterSet):
    object_key = filters.CharFilter()
    object_type = filters.CharFilter()
    action = filters.CharFilter()
    door = filters.CharFilter()
    since = filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte")

    class Meta:
        model = ChangeRecord
        fields = ["object_key", "object_type", "action", "door"]
