"""Webhooks: subscriptions per organization, signed payloads, retries and the delivery log."""

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from registry import services, webhooks
from registry.choices import Door, Status
from registry.models import WebhookDelivery


class Receiver:
    """A real HTTP endpoint on loopback that answers with the queued status codes."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.codes: list[int] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _verify(pool: Any) -> None:
    with transaction.atomic():
        services.lifecycle_transition(
            obj=pool, to=Status.ACTIVE, reason="verified", actor=None, door=Door.WORKER
        )


@pytest.mark.usefixtures("held_deliveries")
@pytest.mark.django_db(transaction=True)
def test_a_verified_pool_sends_a_signed_event_to_its_operator(
    alice: Any, carol: Any, acme: Any, rival: Any, make_pool: Any, receiver: Receiver, api_as: Any
) -> None:
    created = api_as(alice).post(
        "/api/v1/webhooks/", {"url": receiver.url, "events": ["pool.verified"]}, format="json"
    )
    assert created.status_code == 201
    secret = created.data["secret"]
    # carol subscribes too: she must not hear about acme's pool.
    assert (
        api_as(carol).post("/api/v1/webhooks/", {"url": receiver.url}, format="json").status_code
        == 201
    )
    pool = make_pool(acme, Status.VERIFYING)
    _verify(pool)
    (delivery,) = WebhookDelivery.objects.all()
    assert delivery.subscription.organization == acme
    webhooks.webhook_deliver(delivery_id=delivery.pk)
    ((headers, body),) = receiver.requests
    assert headers["X-Interconnect-Event"] == "pool.verified"
    expected = webhooks.sign(secret, headers["X-Interconnect-Timestamp"], body)
    assert headers["X-Interconnect-Signature"] == expected
    assert json.loads(body)["data"]["pool"] == pool.national_id
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 1
    # A redelivered task sends nothing twice.
    webhooks.webhook_deliver(delivery_id=delivery.pk)
    assert len(receiver.requests) == 1


@pytest.mark.usefixtures("held_deliveries")
@pytest.mark.django_db(transaction=True)
def test_server_errors_are_retried_and_client_errors_are_final(
    alice: Any, acme: Any, make_pool: Any, receiver: Receiver
) -> None:
    sub = webhooks.webhook_subscribe(
        organization=acme, url=receiver.url, actor=alice, door=Door.API
    )
    receiver.codes = [503, 200, 410]
    _verify(make_pool(acme, Status.VERIFYING))
    (delivery,) = WebhookDelivery.objects.filter(subscription=sub)
    with pytest.raises(webhooks.DeliveryFailed):
        webhooks.webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("pending", 1, 503)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk).state == "delivered"
    _verify(make_pool(acme, Status.VERIFYING))
    second = WebhookDelivery.objects.filter(subscription=sub).exclude(pk=delivery.pk).get()
    assert webhooks.webhook_deliver(delivery_id=second.pk).state == "failed"


@pytest.mark.django_db
def test_nothing_is_emitted_when_the_transition_rolls_back(
    alice: Any, acme: Any, make_pool: Any, receiver: Receiver
) -> None:
    webhooks.webhook_subscribe(organization=acme, url=receiver.url, actor=alice, door=Door.API)
    pool = make_pool(acme, Status.VERIFYING)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.lifecycle_transition(
            obj=pool, to=Status.ACTIVE, reason="x", actor=None, door=Door.WORKER
        )
        raise RuntimeError("rolled back")
    assert WebhookDelivery.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.org/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://127.0.0.1:9/x", "events": ["pool.exploded"]}, "events"),
    ],
)
def test_bad_subscriptions_are_refused(
    alice: Any, api_as: Any, body: dict[str, Any], field: str
) -> None:
    response = api_as(alice).post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 400 and field in response.data


@pytest.mark.django_db
def test_only_the_organizations_admins_see_its_webhooks(
    alice: Any, bob: Any, carol: Any, acme: Any, api_as: Any
) -> None:
    sub = webhooks.webhook_subscribe(
        organization=acme, url="http://127.0.0.1:9/hook", actor=alice, door=Door.API
    )
    assert api_as(alice).get(f"/api/v1/webhooks/{sub.pk}/").status_code == 200
    assert api_as(bob).get(f"/api/v1/webhooks/{sub.pk}/").status_code == 403
    assert api_as(carol).get(f"/api/v1/webhooks/{sub.pk}/").status_code == 404
    assert api_as(carol).delete(f"/api/v1/webhooks/{sub.pk}/").status_code == 404
    assert api_as(None).get("/api/v1/webhooks/").status_code == 401
    assert api_as(carol).get("/api/v1/webhook-deliveries/").data["count"] == 0


def test_production_refuses_private_targets(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    from django.core.exceptions import ValidationError

    for url in (
        "http://127.0.0.1/x",
        "http://10.0.0.8/x",
        "http://[::1]/x",
        "http://169.254.169.254/",
    ):
        with pytest.raises(ValidationError):
            webhooks._check_url(url)
