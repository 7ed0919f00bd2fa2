"""Django admin for platform staff: read-only views of the ledger (writes go through services,
so that no one edits a slot counter or a booking status by hand), and priority grants, written
through ``market.priority_grant_set`` (platform staff only, with a change record)."""

from __future__ import annotations

from typing import TypeVar

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from brokers import market, models
from registry import selectors as registry_selectors
from registry.choices import Door

_M = TypeVar("_M", bound=Model)


class ReadOnlyAdmin(admin.ModelAdmin[_M]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        return False


@admin.register(models.Booking)
class BookingAdmin(ReadOnlyAdmin[models.Booking]):
    list_display = ["national_id", "organization", "status", "window_start", "accelerators"]
    list_filter = ["status", "door"]
    search_fields = ["national_id", "idempotency_key"]


@admin.register(models.Allocation)
class AllocationAdmin(ReadOnlyAdmin[models.Allocation]):
    list_display = ["booking", "pool", "accelerators", "start", "end", "workload_state"]


@admin.register(models.PoolSlot)
class PoolSlotAdmin(ReadOnlyAdmin[models.PoolSlot]):
    list_display = ["pool", "slot_start", "reserved", "capacity"]


@admin.register(models.Quota)
class QuotaAdmin(ReadOnlyAdmin[models.Quota]):
    list_display = [
        "organization",
        "max_concurrent_accelerators",
        "max_accelerator_hours_per_month",
    ]


@admin.register(models.UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin[models.UsageRecord]):
    list_display = ["allocation", "organization", "started_at", "accelerator_hours", "cost"]


@admin.register(models.PriorityGrant)
class PriorityGrantAdmin(admin.ModelAdmin[models.PriorityGrant]):
    """Grant the priority class (a quota of accelerator-hours), change or withdraw it: each
    write is ``market.priority_grant_set``, as at ``PUT /api/v1/priority-grants/<org>/``, so
    the change log records it (door ``portal``); only platform staff may."""

    list_display = ["organization", "accelerator_hours", "granted_by", "updated_at"]
    fields = ["organization", "accelerator_hours", "granted_by", "updated_at"]
    readonly_fields = ["granted_by", "updated_at"]
    search_fields = ["organization__slug", "organization__name"]

    def _staff(self, request: HttpRequest) -> bool:
        return registry_selectors.is_platform_staff(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._staff(request) and super().has_add_permission(request)

    def has_change_permission(
        self, request: HttpRequest, obj: models.PriorityGrant | None = None
    ) -> bool:
        return self._staff(request) and super().has_change_permission(request, obj)

    def has_delete_permission(
        self, request: HttpRequest, obj: models.PriorityGrant | None = None
    ) -> bool:
        return self._staff(request) and super().has_delete_permission(request, obj)

    def get_readonly_fields(
        self, request: HttpRequest, obj: models.PriorityGrant | None = None
    ) -> list[str]:
        # A grant belongs to its organization: change the hours, or withdraw it.
        return [*self.readonly_fields, "organization"] if obj is not None else self.readonly_fields

    def save_model(
        self,
        request: HttpRequest,
        obj: models.PriorityGrant,
        form: ModelForm[models.PriorityGrant],
        change: bool,
    ) -> None:
        grant = market.priority_grant_set(
            organization=obj.organization,
            actor=request.user,
            door=Door.PORTAL,
            accelerator_hours=obj.accelerator_hours,
        )
        assert grant is not None
        obj.pk, obj.granted_by, obj.updated_at = grant.pk, grant.granted_by, grant.updated_at

    def delete_model(self, request: HttpRequest, obj: models.PriorityGrant) -> None:
        market.priority_grant_set(
            organization=obj.organization,
            actor=request.user,
            door=Door.PORTAL,
            accelerator_hours=None,
        )

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[models.PriorityGrant]
    ) -> None:
        for grant in queryset.select_related("organization"):
            self.delete_model(request, grant)
