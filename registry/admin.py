"""Django admin for platform staff: read-mostly views of the registry."""

from django.contrib import admin

from registry import models


@admin.register(models.Hub)
class HubAdmin(admin.ModelAdmin[models.Hub]):
    list_display = ["code", "name", "region"]


@admin.register(models.Cluster)
class ClusterAdmin(admin.ModelAdmin[models.Cluster]):
    list_display = ["code", "name", "hub"]


@admin.register(models.Accelerator)
class AcceleratorAdmin(admin.ModelAdmin[models.Accelerator]):
    list_display = ["slug", "vendor", "model", "origin", "bf16_dense_tflops", "memory_gb"]
    list_filter = ["vendor", "origin"]


@admin.register(models.Organization)
class OrganizationAdmin(admin.ModelAdmin[models.Organization]):
    list_display = ["slug", "name", "kind"]


@admin.register(models.Center)
class CenterAdmin(admin.ModelAdmin[models.Center]):
    list_display = ["national_id", "name", "operator", "status"]
    list_filter = ["status"]
    readonly_fields = ["national_id", "status", "status_reason", "version"]


@admin.register(models.Pool)
class PoolAdmin(admin.ModelAdmin[models.Pool]):
    list_display = ["national_id", "name", "accelerator", "accelerators", "status"]
    list_filter = ["status", "accelerator"]
    readonly_fields = ["national_id", "status", "status_reason", "version"]


@admin.register(models.ChangeRecord)
class ChangeRecordAdmin(admin.ModelAdmin[models.ChangeRecord]):
    list_display = ["time", "action", "object_key", "door", "actor"]
    list_filter = ["action", "door"]
