"""Every portal form is CSRF-protected, the sign-in form included (it is anonymous)."""

import re
from typing import Any

import pytest

from registry.models import ApiToken, Center, Pool


# (url, form data) of every POST in the portal, built for alice's world.
def _posts(world: Any, alice: Any) -> list[tuple[str, dict[str, Any]]]:
    from registry.services import token_create

    token, _ = token_create(user=alice, name="victim")
    draft = world["own_draft"]
    return [
        ("/centers/new/", {"name": "x"}),
        (f"/centers/{draft.center.national_id}/pools/new/", {"name": "x"}),
        (f"/pools/{draft.national_id}/submit/", {}),
        (f"/pools/{draft.national_id}/transition/", {"to": "retired"}),
        ("/organization/", {"username": "mallory", "role": "admin"}),
        ("/tokens/", {"name": "forged"}),
        (f"/tokens/{token.key_id}/revoke/", {}),
        ("/password/", {"old_password": "x", "new_password1": "y", "new_password2": "y"}),
        (f"/pools/{draft.national_id}/reverify/", {}),
        (
            f"/pools/{draft.national_id}/downtime/",
            {"start": "2030-01-01T00:00", "end": "2030-01-01T01:00"},
        ),
        (
            f"/centers/{draft.center.national_id}/downtime/",
            {"start": "2030-01-01T00:00", "end": "2030-01-01T01:00"},
        ),
        ("/bookings/new/", {"spec": "{}", "option": "[]", "idempotency_key": "x"}),
        (f"/bookings/{world['booking'].national_id}/cancel/", {}),
        (f"/bookings/{world['booking'].national_id}/offer/", {"price": "10"}),
        ("/offers/OF-20300101-00000000/buy/", {}),
        ("/offers/OF-20300101-00000000/withdraw/", {}),
        ("/logout/", {}),
    ]


def _snapshot() -> tuple[Any, ...]:
    from brokers.models import Booking, ResaleOffer
    from verification.models import ScheduledDowntime, VerificationRun

    return (
        list(Booking.objects.values_list("status", flat=True).order_by("pk")),
        list(ResaleOffer.objects.values_list("status", flat=True).order_by("pk")),
        VerificationRun.objects.count(),
        ScheduledDowntime.objects.count(),
        list(Pool.objects.values_list("status", flat=True).order_by("pk")),
        Center.objects.count(),
        list(ApiToken.objects.values_list("revoked_at", flat=True).order_by("pk")),
        ApiToken.objects.count(),
    )


@pytest.mark.django_db
def test_every_portal_post_without_a_token_is_refused(
    alice: Any, world: Any, client_as: Any
) -> None:
    client = client_as(alice, enforce_csrf_checks=True)
    posts = _posts(world, alice)
    before = _snapshot()
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    assert _snapshot() == before


@pytest.mark.django_db
def test_with_the_pages_token_the_post_goes_through(alice: Any, world: Any, client_as: Any) -> None:
    client = client_as(alice, enforce_csrf_checks=True)
    page = client.get("/tokens/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post("/tokens/", {"name": "ok", "csrfmiddlewaretoken": token})
    assert response.status_code == 200 and ApiToken.objects.filter(name="ok").exists()


@pytest.mark.django_db
def test_sign_in_is_csrf_protected_although_anonymous(alice: Any, client_as: Any) -> None:
    client = client_as(None, enforce_csrf_checks=True)
    assert (
        client.post(
            "/login/", {"username": "alice", "password": "correct horse battery staple"}
        ).status_code
        == 403
    )
    page = client.get("/login/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(
        "/login/",
        {
            "username": "alice",
            "password": "correct horse battery staple",
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 302
