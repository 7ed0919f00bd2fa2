"""Abuse: repeated failed logins lock out, token creation is rate-limited, secrets stay secret."""

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from registry.models import ApiToken


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_account_out(alice: Any, settings: Any) -> None:
    client = Client()
    codes = [
        client.post("/login/", {"username": "alice", "password": "wrong"}).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT)
    ]
    # The form again with its error, until the limit is reached; then 429 (locked out).
    assert codes == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    locked = client.post(
        "/login/", {"username": "alice", "password": "correct horse battery staple"}
    )
    # Even the right password is refused while locked out.
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_good_login_works_and_the_login_form_has_csrf(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    assert b"csrfmiddlewaretoken" in page.content
    no_token = client.post(
        "/login/", {"username": "alice", "password": "correct horse battery staple"}
    )
    assert no_token.status_code == 403
    token = page.cookies["csrftoken"].value
    ok = client.post(
        "/login/",
        {
            "username": "alice",
            "password": "correct horse battery staple",
            "csrfmiddlewaretoken": token,
        },
    )
    assert ok.status_code == 302


@pytest.mark.django_db
def test_token_creation_is_rate_limited(alice: Any, api_as: Any, settings: Any) -> None:
    cache.clear()
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "tokens": "3/min",
        },
    }
    from rest_framework.settings import api_settings

    api_settings.reload()
    from registry.api.views import TokenThrottle

    TokenThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    try:
        client = api_as(alice)  # creates one token through the service, not the endpoint
        codes = [
            client.post("/api/v1/tokens/", {"name": f"t{i}"}, format="json").status_code
            for i in range(5)
        ]
    finally:
        cache.clear()
    assert codes == [201, 201, 201, 429, 429]
    assert ApiToken.objects.filter(user=alice).count() == 4


@pytest.mark.django_db
def test_passwords_are_hashed_with_argon2(alice: Any) -> None:
    assert alice.password.startswith("argon2")
