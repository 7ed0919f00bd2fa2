"""Django admin for platform staff: read-only views of the ledger (writes go through services,
so that no one edits a slot counter or a booking status by hand)."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from brokers import models


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(models.Booking)
class BookingAdmin(ReadOnlyAdmin):
    list_display = ["national_id", "organization", "status", "window_start", "accelerators"]
    list_filter = ["status", "door"]
    search_fields = ["national_id", "idempotency_key"]


@admin.register(models.Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ["booking", "pool", "accelerators", "start", "end", "workload_state"]


@admin.register(models.PoolSlot)
class PoolSlotAdmin(ReadOnlyAdmin):
    list_display = ["pool", "slot_start", "reserved", "capacity"]


@admin.register(models.Quota)
class QuotaAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "max_concurrent_accelerators",
        "max_accelerator_hours_per_month",
    ]


@admin.register(models.UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["allocation", "organization", "started_at", "accelerator_hours", "cost"]
