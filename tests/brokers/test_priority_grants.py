"""Platform staff grant the priority class at three doors besides REST: the Django admin and
``manage.py priority_grant``, each through ``market.priority_grant_set`` (change log, door);
anyone else is refused and nothing changes."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from brokers.models import PriorityGrant
from registry.models import ChangeRecord
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
ADMIN = "/admin/brokers/prioritygrant/"


def _grants() -> list[tuple[int, int]]:
    return list(PriorityGrant.objects.values_list("organization_id", "accelerator_hours"))


def _records() -> list[tuple[str, str, str]]:
    return list(
        ChangeRecord.objects.filter(object_type="brokers.prioritygrant")
        .order_by("pk")
        .values_list("action", "door", "actor__username")
    )


def _admin(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def _post(client: Client, page: str, data: dict[str, Any]) -> Any:
    html = client.get(page).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token, html[:500]
    return client.post(page, {**data, "csrfmiddlewaretoken": token.group(1)})


def test_staff_grant_change_and_withdraw_in_the_admin_with_a_change_record(
    deepai: Any,
) -> None:
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = _admin(root)
    response = _post(client, f"{ADMIN}add/", {"organization": deepai.pk, "accelerator_hours": 500})
    assert response.status_code == 302, response.content.decode()[:2000]
    grant = PriorityGrant.objects.get(organization=deepai)
    assert (grant.accelerator_hours, grant.granted_by) == (500, root)
    # Bad input: the field message, nothing changed.
    bad = _post(client, f"{ADMIN}{grant.pk}/change/", {"accelerator_hours": -3})
    assert bad.status_code == 200 and "greater than or equal to 0" in bad.content.decode()
    assert _grants() == [(deepai.pk, 500)]
    assert (
        _post(client, f"{ADMIN}{grant.pk}/change/", {"accelerator_hours": 200}).status_code == 302
    )
    assert _grants() == [(deepai.pk, 200)]
    assert _post(client, f"{ADMIN}{grant.pk}/delete/", {"post": "yes"}).status_code == 302
    assert _grants() == []
    assert _records() == [
        ("create", "portal", "root"),
        ("update", "portal", "root"),
        ("delete", "portal", "root"),
    ]


def test_admin_staff_who_are_not_platform_staff_cannot_grant(alice: Any, deepai: Any) -> None:
    """An operator's admin with every model permission of the admin: still not the platform."""
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    alice.user_permissions.set(Permission.objects.filter(content_type__app_label="brokers"))
    client = _admin(alice)
    assert client.get(f"{ADMIN}add/").status_code == 403
    response = client.post(f"{ADMIN}add/", {"organization": deepai.pk, "accelerator_hours": 9})
    assert response.status_code == 403
    assert _grants() == [] and _records() == []


def test_the_management_command_grants_shows_and_withdraws(
    pat: Any, dave: Any, deepai: Any
) -> None:
    def run(*args: str) -> str:
        out = StringIO()
        call_command("priority_grant", *args, stdout=out)
        return out.getvalue()

    assert "no priority grant" in run("deepai")
    assert "300 accelerator-hours granted" in run("deepai", "--hours", "300", "--by", "pat")
    assert "deepai: 300 accelerator-hours" in run("deepai")
    for args, message in [
        (("deepai", "--hours", "9", "--by", "dave"), "Only platform staff grant"),
        (("deepai", "--hours", "9"), "give --by USERNAME"),
        (("deepai", "--hours", "-5", "--by", "pat"), "accelerator_hours: Must not be negative."),
        (("nobody", "--hours", "9", "--by", "pat"), "no organization 'nobody'"),
    ]:
        with pytest.raises(CommandError, match=re.escape(message)):
            run(*args)
    assert _grants() == [(deepai.pk, 300)]
    assert "withdrawn" in run("deepai", "--withdraw", "--by", "pat")
    assert _grants() == []
    assert _records() == [("create", "cli", "pat"), ("delete", "cli", "pat")]
