"""Read-only admin views of verification's records (evidence is written by the worker only)."""

from django.contrib import admin

from verification.models import Heartbeat, ScheduledDowntime, VerificationRun


@admin.register(VerificationRun)
class VerificationRunAdmin(admin.ModelAdmin[VerificationRun]):
    list_display = ["run_id", "pool", "trigger", "state", "created_at", "finished_at"]
    list_filter = ["state", "trigger"]
    search_fields = ["run_id", "pool__national_id"]

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin[Heartbeat]):
    list_display = ["pool", "time", "agent_id", "utilization", "accelerators_busy"]
    search_fields = ["pool__national_id", "agent_id"]


@admin.register(ScheduledDowntime)
class ScheduledDowntimeAdmin(admin.ModelAdmin[ScheduledDowntime]):
    list_display = ["pool", "center", "start", "end", "reason"]
