"""Writes that used to skip the service layer: each goes through a service now, which checks who
may do it (at every door, not only in a REST permission) and writes the change record."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied

from brokers import services as broker_services
from brokers.models import Quota
from registry import services, webhooks
from registry.choices import ChangeAction, Door, Status
from registry.models import Center, ChangeRecord, Pool, WebhookSubscription

pytestmark = pytest.mark.django_db

HOOK = "http://127.0.0.1:9/hook"


def _records(object_type: str, action: str) -> list[ChangeRecord]:
    return list(ChangeRecord.objects.filter(object_type=object_type, action=action))


# --- Webhook subscriptions ---------------------------------------------------------------------


def test_deleting_a_webhook_through_rest_goes_through_the_service_and_is_recorded(
    alice: Any, acme: Any, api_as: Any
) -> None:
    sub = webhooks.webhook_subscribe(organization=acme, url=HOOK, actor=alice, door=Door.API)
    response = api_as(alice).delete(f"/api/v1/webhooks/{sub.pk}/")
    assert response.status_code == 204
    assert not WebhookSubscription.objects.filter(pk=sub.pk).exists()
    (record,) = _records("registry.webhooksubscription", ChangeAction.DELETE)
    assert (record.actor, record.door, record.owner, record.object_id) == (
        alice,
        Door.API,
        acme,
        sub.pk,
    )
    assert record.before["url"] == HOOK and record.after is None
    assert "secret" not in record.before  # the change log never carries the signing secret


def test_creating_a_webhook_is_recorded_without_its_secret(
    alice: Any, acme: Any, api_as: Any
) -> None:
    response = api_as(alice).post("/api/v1/webhooks/", {"url": HOOK}, format="json")
    assert response.status_code == 201
    (record,) = _records("registry.webhooksubscription", ChangeAction.CREATE)
    assert (record.actor, record.door, record.owner) == (alice, Door.API, acme)
    assert "secret" not in record.after


def test_only_the_organizations_admins_manage_its_webhooks_at_any_door(
    alice: Any, bob: Any, carol: Any, acme: Any
) -> None:
    sub = webhooks.webhook_subscribe(organization=acme, url=HOOK, actor=alice, door=Door.API)
    for actor in (bob, carol):  # a member; another organization's admin
        with pytest.raises(PermissionDenied):
            webhooks.webhook_delete(subscription=sub, actor=actor, door=Door.PORTAL)
        with pytest.raises(PermissionDenied):
            webhooks.webhook_subscribe(organization=acme, url=HOOK, actor=actor, door=Door.CLI)
    assert WebhookSubscription.objects.filter(organization=acme).count() == 1
    assert not _records("registry.webhooksubscription", ChangeAction.DELETE)
    webhooks.webhook_delete(subscription=sub, actor=alice, door=Door.PORTAL)
    assert not WebhookSubscription.objects.filter(pk=sub.pk).exists()


# --- Centers and pools: only admins delete ----------------------------------------------------


def test_only_admins_delete_centers_and_pools_whatever_the_door(
    alice: Any, bob: Any, carol: Any, acme: Any, make_pool: Any
) -> None:
    pool = make_pool(acme, Status.DRAFT)
    center = pool.center
    for actor in (bob, carol):
        with pytest.raises(PermissionDenied):
            services.pool_delete(pool=pool, actor=actor, door=Door.PORTAL)
        with pytest.raises(PermissionDenied):
            services.center_delete(center=center, actor=actor, door=Door.CLI)
    assert Pool.objects.filter(pk=pool.pk).exists() and Center.objects.filter(pk=center.pk).exists()
    assert not ChangeRecord.objects.filter(action=ChangeAction.DELETE).exists()
    services.center_delete(center=center, actor=alice, door=Door.PORTAL)
    assert not Center.objects.filter(pk=center.pk).exists()
    assert {r.object_type for r in ChangeRecord.objects.filter(action=ChangeAction.DELETE)} == {
        "registry.center",
        "registry.pool",
    }


def test_a_member_deleting_through_rest_is_refused_by_the_service(
    bob: Any, acme: Any, make_pool: Any, api_as: Any
) -> None:
    pool = make_pool(acme, Status.DRAFT)
    assert api_as(bob).delete(f"/api/v1/pools/{pool.national_id}/").status_code == 403
    assert api_as(bob).delete(f"/api/v1/centers/{pool.center.national_id}/").status_code == 403
    assert Pool.objects.filter(pk=pool.pk).exists()


# --- Quotas ------------------------------------------------------------------------------------


def test_setting_a_quota_is_recorded_with_its_door(
    pat: Any, dave: Any, deepai: Any, api_as: Any
) -> None:
    response = api_as(pat).put(
        "/api/v1/quotas/deepai/",
        {"max_concurrent_accelerators": 8, "max_accelerator_hours_per_month": None},
        format="json",
    )
    assert response.status_code == 200, response.content
    broker_services.quota_set(
        organization=deepai,
        actor=pat,
        door=Door.CLI,
        max_concurrent_accelerators=16,
        max_accelerator_hours_per_month=100,
    )
    created, updated = ChangeRecord.objects.filter(object_type="brokers.quota").order_by("id")
    assert (created.action, created.door, created.actor, created.owner) == (
        ChangeAction.CREATE,
        Door.API,
        pat,
        deepai,
    )
    assert created.before is None and created.after["max_concurrent_accelerators"] == 8
    assert (updated.action, updated.door) == (ChangeAction.UPDATE, Door.CLI)
    assert updated.before["max_concurrent_accelerators"] == 8
    assert updated.after["max_accelerator_hours_per_month"] == 100
    with pytest.raises(PermissionDenied):
        broker_services.quota_set(
            organization=deepai,
            actor=dave,
            door=Door.API,
            max_concurrent_accelerators=None,
            max_accelerator_hours_per_month=None,
        )
    assert Quota.objects.get(organization=deepai).max_concurrent_accelerators == 16
