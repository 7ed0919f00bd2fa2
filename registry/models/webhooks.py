"""Webhooks: organizations subscribe to events and receive signed payloads."""

import secrets
import uuid

from django.db import models

from .orgs import Organization

WEBHOOK_EVENTS = (
    "pool.verified",
    "pool.failed",
    "pool.degraded",
    "pool.offline",
    "booking.placed",
    "booking.started",
    "booking.finished",
    "booking.replaced",
    "booking.cancelled",
    "booking.preempted",
    "booking.sold",
    "booking.bought",
)


def new_webhook_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


class WebhookSubscription(models.Model):
    """An organization's endpoint for a set of events.

    Payloads are signed with HMAC-SHA256 over ``<timestamp>.<body>`` using ``secret`` (shown to
    the organization so that it can check the signature; it must be stored to sign).
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list, blank=True, help_text="Event names; empty: all.")
    secret = models.CharField(max_length=80, default=new_webhook_secret, editable=False)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.organization.slug} -> {self.url}"

    def wants(self, event: str) -> bool:
        return self.active and (not self.events or event in self.events)


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one subscription: the delivery log."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # An attempt in progress holds this lease: a second task for the same delivery (a relayed
    # or redelivered message) sees it and does not POST concurrently.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One delivery per (event, subscription): a redelivered task never sends twice.
            models.UniqueConstraint(
                fields=["subscription", "event_id"], name="webhook_delivery_once"
            ),
        ]
        indexes = [
            # The relay's scan: pending deliveries, oldest first.
            models.Index(fields=["state", "created_at"], name="webhook_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.subscription_id} ({self.state})"
