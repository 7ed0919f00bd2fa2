"""Issue 11, defect 2: a booking whose window lies in the past was accepted and ran now.

``earliest_start = now - 5 h`` with a 4 h duration found the past slots of a full pool free, was
confirmed, and its quota was counted on a window nobody uses. Every door now refuses a start in
the past with the one message of ``brokers.placement.spec.past_start_message``; a start within
the grace (``BROKER_START_GRACE_SECONDS``, for clock skew) means now; no start means now.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from brokers import services
from brokers.forms import WorkloadForm
from brokers.models import Booking, Quota
from brokers.placement import place
from brokers.placement.spec import past_start_message
from brokers.rpc.server import BrokerRuntime, build_server
from tests.brokers.conftest import spec

PAST = dt.timedelta(hours=5)


def past() -> dt.datetime:
    return timezone.now() - PAST


def message() -> str:
    return past_start_message()


# --- the rule itself ----------------------------------------------------------------------------


def test_the_specification_refuses_a_past_start_and_takes_one_within_the_grace_as_now(
    settings: Any,
) -> None:
    settings.BROKER_START_GRACE_SECONDS = 120
    now = timezone.now()
    with pytest.raises(ValidationError) as refused:
        spec(earliest_start=now - PAST, duration=dt.timedelta(hours=4)).validated(now=now)
    assert refused.value.message_dict == {"earliest_start": [message()]}
    assert "120 s" in message()
    # Just past the grace: refused; within it: moved to now (placement sees no past slot).
    with pytest.raises(ValidationError):
        spec(earliest_start=now - dt.timedelta(seconds=121)).validated(now=now)
    skewed = spec(earliest_start=now - dt.timedelta(seconds=90)).validated(now=now)
    assert skewed.start == now
    # A window the client computed from its own "now" still fits its latest end.
    tight = spec(
        earliest_start=now - dt.timedelta(seconds=90),
        duration=dt.timedelta(hours=1),
        latest_end=now - dt.timedelta(seconds=90) + dt.timedelta(hours=1),
    ).validated(now=now)
    assert tight.start == now
    # No start: now.
    assert spec(earliest_start=None).validated(now=now).start == now
    future = now + dt.timedelta(hours=2)
    assert spec(earliest_start=future).validated(now=now).start == future


def test_the_grace_is_a_setting(settings: Any) -> None:
    settings.BROKER_START_GRACE_SECONDS = 0
    now = timezone.now()
    with pytest.raises(ValidationError):
        spec(earliest_start=now - dt.timedelta(seconds=1)).validated(now=now)


# --- the service layer ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_past_window_next_to_a_booking_holding_the_whole_pool_is_refused(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """The issue's reproduction: it was ``confirmed`` on the full pool."""
    pool = active_pool(acme, size=8)
    current = services.booking_create(
        spec=spec(count=8, earliest_start=None, duration=dt.timedelta(hours=4)),
        idempotency_key="now",
        actor=dave,
        door="api",
    )
    assert current.allocations.get().pool_id == pool.pk
    with pytest.raises(ValidationError) as refused:
        services.booking_create(
            spec=spec(count=8, earliest_start=past(), duration=dt.timedelta(hours=4)),
            idempotency_key="past",
            actor=dave,
            door="api",
        )
    assert refused.value.message_dict == {"earliest_start": [message()]}
    assert list(Booking.objects.values_list("idempotency_key", flat=True)) == ["now"]
    # From a chosen option too (the option path books without placement).
    with pytest.raises(ValidationError):
        services.booking_create(
            spec=spec(count=8, earliest_start=past(), duration=dt.timedelta(hours=4)),
            option=[(pool.national_id, 8)],
            idempotency_key="past-option",
            actor=dave,
            door="api",
        )
    assert Booking.objects.count() == 1


@pytest.mark.django_db
def test_a_past_window_does_not_evade_the_concurrency_quota(
    dave: Any, deepai: Any, acme: Any, active_pool: Any
) -> None:
    """A window in the past overlaps nothing the quota counts, yet the workload would run now
    beside the firm's current ones."""
    Quota.objects.create(organization=deepai, max_concurrent_accelerators=8)
    active_pool(acme, size=8)
    active_pool(acme, size=8)
    services.booking_create(
        spec=spec(count=8, earliest_start=None, duration=dt.timedelta(hours=2)),
        idempotency_key="now",
        actor=dave,
        door="api",
    )
    with pytest.raises(ValidationError) as refused:
        services.booking_create(
            spec=spec(count=8, earliest_start=past(), duration=dt.timedelta(hours=4)),
            idempotency_key="evade",
            actor=dave,
            door="api",
        )
    assert refused.value.message_dict == {"earliest_start": [message()]}
    assert Booking.objects.filter(organization=deepai).count() == 1


@pytest.mark.django_db
def test_placement_refuses_a_past_window(dave: Any, acme: Any, active_pool: Any) -> None:
    active_pool(acme, size=8)
    with pytest.raises(ValidationError) as refused:
        services.placement_preview(spec=spec(earliest_start=past()), actor=dave)
    assert refused.value.message_dict == {"earliest_start": [message()]}
    # The engine itself never looks at past slots, whoever calls it.
    with pytest.raises(ValidationError):
        place(spec(earliest_start=past()))


@pytest.mark.django_db
def test_a_start_within_the_grace_books_from_now(dave: Any, acme: Any, active_pool: Any) -> None:
    active_pool(acme, size=8)
    before = timezone.now()
    booking = services.booking_create(
        spec=spec(count=4, earliest_start=before - dt.timedelta(seconds=30)),
        idempotency_key="skewed",
        actor=dave,
        door="api",
    )
    assert booking.window_start >= before
    assert booking.window_end - booking.window_start == dt.timedelta(hours=1)


# --- REST -----------------------------------------------------------------------------------------


def _body(**values: Any) -> dict[str, Any]:
    return {
        "accelerator_model": "nvidia-a100-80g",
        "count": 4,
        "duration_seconds": 4 * 3600,
        **values,
    }


@pytest.mark.django_db
def test_rest_refuses_a_past_start_with_the_service_message(
    dave: Any, acme: Any, active_pool: Any, api_as: Any
) -> None:
    active_pool(acme, size=8)
    client = api_as(dave)
    placed = client.post(
        "/api/v1/placements/", _body(earliest_start=past().isoformat()), format="json"
    )
    assert placed.status_code == 400
    assert placed.json()["earliest_start"] == [message()]
    booked = client.post(
        "/api/v1/bookings/",
        {"spec": _body(earliest_start=past().isoformat()), "idempotency_key": "p"},
        format="json",
    )
    assert booked.status_code == 400
    assert booked.json()["spec"]["earliest_start"] == [message()]
    assert not Booking.objects.exists()
    # Omitted: now.
    ok = client.post("/api/v1/bookings/", {"spec": _body(), "idempotency_key": "n"}, format="json")
    assert ok.status_code == 201, ok.content


# --- gRPC and the command line --------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    return [(v.field, v.description) for v in detail.field_violations]


@pytest.mark.django_db(transaction=True)
def test_grpc_refuses_a_past_start_with_invalid_argument(
    dave: Any, acme: Any, active_pool: Any, broker: BrokerRuntime
) -> None:
    from brokers.client.client import BrokerClient, workload_spec
    from registry import services as registry_services

    active_pool(acme, size=8)
    _, token = registry_services.token_create(user=dave, name="grpc")
    client = BrokerClient(f"127.0.0.1:{broker.port}", token, timeout=10)
    asked = workload_spec(
        accelerator_model="nvidia-a100-80g",
        count=8,
        duration_seconds=4 * 3600,
        earliest_start=past(),
    )
    try:
        for call in (lambda: client.place(asked), lambda: client.book(asked, idempotency_key="p")):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _violations(refused.value) == [("earliest_start", message())]
        assert not Booking.objects.exists()
    finally:
        client.close()


@pytest.mark.django_db(transaction=True)
def test_the_cli_prints_the_refusal_and_exits_1(
    dave: Any, acme: Any, active_pool: Any, broker: BrokerRuntime
) -> None:
    from registry import services as registry_services
    from tests.brokers.test_cli import run

    active_pool(acme, size=8)
    _, token = registry_services.token_create(user=dave, name="cli")
    start = past().isoformat()
    for verb in ("place", "book"):
        out = run(
            broker, token, verb, "--model", "nvidia-a100-80g", "--count", "8", "--start", start
        )
        assert out.returncode == 1, out.stdout
        assert "INVALID_ARGUMENT" in out.stderr
        assert f"earliest_start: {message()}" in out.stderr
    assert not Booking.objects.exists()


# --- the portal -----------------------------------------------------------------------------------


def _form_data(**values: Any) -> dict[str, Any]:
    return {
        "accelerator_model": "nvidia-a100-80g",
        "count": 8,
        "gang_size": 1,
        "duration_hours": 4,
        "latency_class": "training",
        "max_centers": 1,
        **values,
    }


@pytest.mark.django_db
def test_the_portal_form_refuses_a_past_start(dave: Any, acme: Any, active_pool: Any) -> None:
    active_pool(acme, size=8)
    moment = timezone.localtime(past()).strftime("%Y-%m-%dT%H:%M")
    form = WorkloadForm(_form_data(earliest_start=moment))
    assert not form.is_valid()
    assert form.errors["earliest_start"] == [message()]
    # On the preview page, the field carries the message.
    client = Client()
    client.force_login(dave)
    page = client.get("/placement/", {"preview": "1", **_form_data(earliest_start=moment)})
    assert page.status_code == 200
    assert page.context["form"].errors["earliest_start"] == [message()]
    assert page.context["result"] is None


@pytest.mark.django_db
def test_a_preview_without_a_start_books_from_the_moment_of_booking(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    """The previewed specification keeps "start now": booking it minutes later is not a
    booking in the past."""
    active_pool(acme, size=8)
    client = Client()
    client.force_login(dave)
    page = client.get("/placement/", {"preview": "1", **_form_data()})
    assert page.context["result"].options
    assert json.loads(page.context["spec_json"])["earliest_start"] is None
