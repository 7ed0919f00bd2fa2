"""What changed, who changed it and through which door."""

from django.conf import settings
from django.db import models

from registry.choices import ChangeAction, Door, Status

from .orgs import Organization


class ChangeRecord(models.Model):
    """One create, update, delete or status change of a registry object.

    Written by services (not signals or middleware), so changes made by Celery workers, the gRPC
    broker and agents are recorded the same way as those from the portal and the API. ``owner`` is
    the tenant the object belongs to: it decides who may read the record.
    """

    time = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    owner = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    door = models.CharField(max_length=10, choices=Door.choices)
    request_id = models.CharField(max_length=64, blank=True)
    object_type = models.CharField(max_length=40)
    object_id = models.PositiveBigIntegerField()
    object_key = models.CharField(max_length=60, help_text="National id or slug of the object.")
    object_repr = models.CharField(max_length=200)
    action = models.CharField(max_length=10, choices=ChangeAction.choices)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [
            # The change log of one tenant, newest first.
            models.Index(fields=["owner", "-time"], name="change_owner_time_idx"),
            models.Index(fields=["object_type", "object_id"], name="change_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M} {self.action} {self.object_key}"


class LifecycleTransition(models.Model):
    """One status change of a center or pool, with its reason (healthchecks' ``Flip``).

    Availability is computed from these rows: a pool's status over time is the sequence of its
    transitions.
    """

    object_type = models.CharField(max_length=40)
    object_id = models.PositiveBigIntegerField()
    object_key = models.CharField(max_length=60)
    from_status = models.CharField(max_length=10, choices=Status.choices)
    to_status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    door = models.CharField(max_length=10, choices=Door.choices)
    time = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["time", "id"]
        indexes = [
            models.Index(fields=["object_type", "object_id", "time"], name="transition_obj_idx")
        ]

    def __str__(self) -> str:
        return f"{self.object_key}: {self.from_status} -> {self.to_status}"
