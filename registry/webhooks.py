"""Webhook services: subscribe, emit an event, deliver it (signed, retried, logged).

Apps above the registry call ``webhook_emit`` inside their own transaction; deliveries are
created in it and sent by a Celery task after commit, so an event is never sent for a change
that rolled back.
"""

import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from interconnect.metrics import WEBHOOK_DELIVERIES
from interconnect.tasking import enqueue, enqueue_on_commit
from registry import selectors
from registry.actors import Actor
from registry.choices import ChangeAction, Door
from registry.models import WEBHOOK_EVENTS, Organization, WebhookDelivery, WebhookSubscription
from registry.netguard import OutboundRefused, outbound_post, resolve_public
from registry.services import change_record, snapshot

DELIVERY_TIMEOUT_SECONDS = 5
# Sent by name (interconnect.tasking): services never import task modules.
WEBHOOK_DELIVER_TASK = "registry.tasks.webhook_deliver_task"


class DeliveryFailed(Exception):
    """A delivery attempt that may succeed later (network error, 5xx, 429)."""


class DeliveryBusy(DeliveryFailed):
    """The delivery's lease is held by another attempt (alive, or killed mid-attempt)."""


def _check_url(url: str) -> None:
    """http(s) only, and no private or local target outside development (SSRF guard)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError({"url": ["Use an http:// or https:// URL."]})
    resolve_public(
        parts.hostname,
        parts.port or (443 if parts.scheme == "https" else 80),
        field="url",
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE_TARGETS,
    )


def _require_admin_of(actor: Actor, organization: Organization) -> None:
    """Webhooks are the organization's settings: its admins (or platform staff) only."""
    if not selectors.is_platform_staff(actor) and not (
        selectors.is_org_admin(actor) and selectors.organization_of(actor) == organization
    ):
        raise PermissionDenied("Only an organization admin may manage its webhooks.")


def _snapshot(sub: WebhookSubscription) -> dict[str, Any]:
    """The subscription for the change log, without its signing secret."""
    data = snapshot(sub)
    data.pop("secret", None)
    return data


@transaction.atomic
def webhook_subscribe(
    *,
    organization: Organization,
    url: str,
    actor: Actor,
    door: Door,
    events: list[str] | None = None,
) -> WebhookSubscription:
    """Subscribe ``organization`` to events at ``url`` (its admins only), with a change record."""
    _require_admin_of(actor, organization)
    unknown = sorted(set(events or []) - set(WEBHOOK_EVENTS))
    if unknown:
        raise ValidationError({"events": [f"Unknown events: {', '.join(unknown)}."]})
    _check_url(url)
    sub = WebhookSubscription(organization=organization, url=url, events=sorted(set(events or [])))
    sub.full_clean()
    sub.save()
    change_record(
        obj=sub,
        action=ChangeAction.CREATE,
        actor=actor,
        door=door,
        before=None,
        after=_snapshot(sub),
    )
    return sub


@transaction.atomic
def webhook_delete(*, subscription: WebhookSubscription, actor: Actor, door: Door) -> None:
    """Delete a subscription (and its delivery log) of the actor's organization: its admins
    only, whatever the door; the change log keeps what was deleted (without the secret)."""
    sub = (
        WebhookSubscription.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=subscription.pk)
    )
    _require_admin_of(actor, sub.organization)
    before, pk = _snapshot(sub), sub.pk
    sub.delete()
    change_record(
        obj=sub,
        action=ChangeAction.DELETE,
        actor=actor,
        door=door,
        before=before,
        after=None,
        object_id=pk,
    )


def webhook_emit(*, organization: Organization | None, event: str, data: dict[str, Any]) -> int:
    """Record one delivery per matching subscription of ``organization`` and send after commit.

    Returns the number of deliveries created.
    """
    if organization is None:
        return 0
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    created = []
    for sub in WebhookSubscription.objects.filter(organization=organization, active=True):
        if sub.wants(event):
            payload = {"event": event, "time": timezone.now().isoformat(), "data": data}
            created.append(
                WebhookDelivery.objects.create(subscription=sub, event=event, payload=payload)
            )
    if created:
        for delivery in created:
            enqueue_on_commit(WEBHOOK_DELIVER_TASK, delivery.pk)
    return len(created)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_deliver(*, delivery_id: int) -> WebhookDelivery:
    """Send one delivery (one attempt). Raises ``DeliveryFailed`` for a retryable failure.

    The attempt is claimed first by compare-and-set (a lease in ``claimed_until``), so two tasks
    for one delivery (a relayed message beside a late original) never POST at the same time; a
    delivery no longer pending is not sent again. The HTTP call happens outside any transaction.
    """
    now = timezone.now()
    lease = now + dt.timedelta(seconds=DELIVERY_TIMEOUT_SECONDS + 5)
    claimed = (
        WebhookDelivery.objects.filter(pk=delivery_id, state=WebhookDelivery.State.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=lease, last_attempt_at=now)
    )
    delivery = WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)
    if not claimed:
        if delivery.state == WebhookDelivery.State.PENDING:
            # Another attempt holds the lease, or held it when its worker died: try again once
            # the lease may have lapsed (the task retries with backoff).
            raise DeliveryBusy(f"delivery {delivery_id} is being attempted elsewhere")
        return delivery
    body = json.dumps({"id": str(delivery.event_id), **delivery.payload}).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "Actor-Agent": "compute-interconnect-webhooks/1",
        "X-Interconnect-Event": delivery.event,
        "X-Interconnect-Delivery": str(delivery.event_id),
        "X-Interconnect-Timestamp": timestamp,
        "X-Interconnect-Signature": sign(delivery.subscription.secret, timestamp, body),
    }
    status_code: int | None = None
    error = ""
    network_error = False
    try:
        # The outbound guard: resolved and checked now, sent to the checked address, and a
        # redirect is the answer (never followed to another host).
        response = outbound_post(
            delivery.subscription.url,
            content=body,
            headers=headers,
            timeout=DELIVERY_TIMEOUT_SECONDS,
            allow_private=settings.WEBHOOK_ALLOW_PRIVATE_TARGETS,
        )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
            if response.is_redirect:
                error += " (redirects are not followed)"
    except OutboundRefused as exc:
        error = f"refused by the outbound guard: {exc}"[:500]
        network_error = exc.transient
    except httpx.HTTPError as exc:
        error = (str(exc) or type(exc).__name__)[:500]
        network_error = True
    ok = status_code is not None and 200 <= status_code < 300
    retryable = not ok and (
        network_error or (status_code is not None and (status_code >= 500 or status_code == 429))
    )
    fields: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
    if ok:
        fields |= {"state": WebhookDelivery.State.DELIVERED, "delivered_at": timezone.now()}
        WEBHOOK_DELIVERIES.labels("delivered").inc()
    elif not retryable:
        fields |= {"state": WebhookDelivery.State.FAILED}
        WEBHOOK_DELIVERIES.labels("failed").inc()
    else:
        WEBHOOK_DELIVERIES.labels("retry").inc()
    # ``attempts`` counts completed attempts: one cut short by a killed worker is not counted.
    WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDelivery.State.PENDING).update(
        claimed_until=None, attempts=F("attempts") + 1, **fields
    )
    delivery.refresh_from_db()
    if retryable:
        raise DeliveryFailed(error or f"HTTP {status_code}")
    return delivery


def webhook_requeue_pending(*, grace_seconds: float = 900, limit: int = 1000) -> int:
    """The outbox relay: send again the task of deliveries still pending after ``grace_seconds``
    with no attempt in progress (their message was lost with the broker, or never published
    because the broker was down at commit). Returns how many were re-enqueued.

    The default grace exceeds the longest retry backoff (600 s), so deliveries merely waiting for
    their next retry are left alone; a relayed task beside a late original is harmless (lease).
    """
    now = timezone.now()
    cutoff = now - dt.timedelta(seconds=grace_seconds)
    stale = (
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, created_at__lte=cutoff)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .filter(Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lte=cutoff))
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    ids = list(stale)
    for pk in ids:
        enqueue(WEBHOOK_DELIVER_TASK, pk)
    return len(ids)


def webhook_give_up(*, delivery_id: int) -> None:
    """Mark a delivery failed after its last retry."""
    WebhookDelivery.objects.filter(pk=delivery_id, state=WebhookDelivery.State.PENDING).update(
        state=WebhookDelivery.State.FAILED
    )


# --- Registry events --------------------------------------------------------------------------

POOL_EVENTS = {
    "active": "pool.verified",
    "failed": "pool.failed",
    "degraded": "pool.degraded",
    "offline": "pool.offline",
}


def on_status_changed(
    sender: Any,
    object_type: str,
    object_id: int,
    from_status: str,
    to_status: str,
    reason: str,
    **kwargs: Any,
) -> None:
    """Pool lifecycle -> webhook events for the pool's operator (runs after commit)."""
    from registry.models import Pool

    event = POOL_EVENTS.get(to_status)
    if object_type != "registry.pool" or event is None:
        return
    if event == "pool.verified" and from_status not in ("verifying", "submitted"):
        return  # back from degraded is not a new verification
    pool = Pool.objects.select_related("center__operator").filter(pk=object_id).first()
    if pool is None:
        return
    with transaction.atomic():
        webhook_emit(
            organization=pool.center.operator,
            event=event,
            data={"pool": pool.national_id, "from": from_status, "to": to_status, "reason": reason},
        )
