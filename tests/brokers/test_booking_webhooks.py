"""Booking events reach the firm's webhook subscribers, once per status, never another firm's."""

from typing import Any

import pytest

from brokers import services
from registry.choices import Door
from registry.models import WebhookDelivery
from registry.webhooks import webhook_subscribe
from tests.brokers.conftest import spec


@pytest.mark.django_db
def test_placed_and_cancelled_bookings_are_announced_to_the_firm_only(
    dave: Any, alice: Any, deepai: Any, acme: Any, active_pool: Any
) -> None:
    active_pool(acme)
    hook = "http://127.0.0.1:9/hook"
    mine = webhook_subscribe(organization=deepai, url=hook, actor=dave, door=Door.API)
    theirs = webhook_subscribe(organization=acme, url=hook, actor=alice, door=Door.API)
    booking = services.booking_create(
        spec=spec(count=4), idempotency_key="w1", actor=dave, door=Door.API
    )
    services.booking_cancel(booking=booking, actor=dave, door=Door.API)
    services.booking_cancel(booking=booking, actor=dave, door=Door.API)  # idempotent: no 2nd event
    events = list(
        WebhookDelivery.objects.filter(subscription=mine)
        .order_by("id")
        .values_list("event", flat=True)
    )
    assert events == ["booking.placed", "booking.cancelled"]
    payload = WebhookDelivery.objects.filter(subscription=mine).first().payload
    assert payload["data"]["booking"] == booking.national_id
    assert not WebhookDelivery.objects.filter(subscription=theirs).exists()
