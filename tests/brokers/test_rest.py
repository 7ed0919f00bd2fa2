"""The broker's REST doors: capacity, placements and bookings, with per-object tenancy."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from registry.models import Pool
from tests.brokers.conftest import next_hour, spec

pytestmark = pytest.mark.django_db


def body(**spec: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "accelerator_model": "nvidia-a100-80g",
        "count": 4,
        "earliest_start": next_hour().isoformat(),
        "duration_seconds": 3600,
    }
    values.update(spec)
    return values


@pytest.mark.parametrize("snapshot", [False, True], ids=["sql", "snapshot"])
def test_capacity_lists_verified_free_capacity_page_by_page(
    snapshot: bool, dave: Any, acme: Any, api_as: Any, active_pool: Any, settings: Any
) -> None:
    from brokers import services
    from brokers.placement import catalog
    from registry.choices import Status

    pools = sorted(active_pool(acme, size=8).national_id for _ in range(5))
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
    catalog.invalidate()
    catalog.current()  # loaded now: what follows happens after the snapshot
    # One pool full and one gone offline: neither is listed (fresh even with a snapshot).
    services.booking_create(
        spec=spec(count=8, duration=dt.timedelta(minutes=30), earliest_start=timezone.now()),
        option=[(pools[0], 8)],
        idempotency_key="full",
        actor=dave,
        door="api",
    )
    Pool.objects.filter(national_id=pools[1]).update(status=Status.OFFLINE)
    pools = pools[2:]
    client = api_as(dave)
    first = client.get("/api/v1/capacity/", {"page_size": 2}).json()
    assert [r["pool"] for r in first["results"]] == pools[:2], first
    assert first["results"][0]["free"] == 8
    rest = client.get(
        "/api/v1/capacity/", {"page_size": 2, "page_token": first["next_page_token"]}
    ).json()
    assert [r["pool"] for r in rest["results"]] == pools[2:] and rest["next_page_token"] == ""
    assert first["results"][0]["hub"] == "NX" and first["results"][0]["cluster"] == "ZW"
    assert api_as(None).get("/api/v1/capacity/").status_code in (401, 403)


def test_placements_rank_and_explain(dave: Any, acme: Any, api_as: Any, active_pool: Any) -> None:
    pool = active_pool(acme, size=8)
    answer = api_as(dave).post("/api/v1/placements/", body(), format="json")
    assert answer.status_code == 200, answer.content
    data = answer.json()
    assert data["options"][0]["parts"][0]["pool"] == pool.national_id
    assert data["options"][0]["cost"] == "40.00"
    bad = api_as(dave).post("/api/v1/placements/", body(count=3, gang_size=2), format="json")
    assert bad.status_code == 400 and "gang_size" in bad.json()


def test_booking_create_list_retrieve_cancel(
    dave: Any, acme: Any, api_as: Any, active_pool: Any
) -> None:
    active_pool(acme, size=8)
    client = api_as(dave)
    created = client.post(
        "/api/v1/bookings/", {"spec": body(count=8), "idempotency_key": "k1"}, format="json"
    )
    assert created.status_code == 201, created.content
    nid = created.json()["national_id"]
    again = client.post(
        "/api/v1/bookings/", {"spec": body(count=8)}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert again.json()["national_id"] == nid
    full = client.post(
        "/api/v1/bookings/", {"spec": body(count=1), "idempotency_key": "k2"}, format="json"
    )
    assert full.status_code == 409 and full.json()["code"] == "booking.no_placement"
    assert [b["national_id"] for b in client.get("/api/v1/bookings/").json()["results"]] == [nid]
    assert client.get(f"/api/v1/bookings/{nid}/").json()["allocations"][0]["accelerators"] == 8
    cancelled = client.post(f"/api/v1/bookings/{nid}/cancel/")
    assert cancelled.json()["status"] == "cancelled"
    events = client.get(f"/api/v1/bookings/{nid}/events/").json()
    assert [e["kind"] for e in events] == ["created", "status"]


def test_tenancy_of_bookings(
    dave: Any, alice: Any, carol: Any, acme: Any, api_as: Any, active_pool: Any
) -> None:
    from tests.factories import OrganizationFactory, UserFactory

    active_pool(acme, size=8)
    nid = (
        api_as(dave)
        .post("/api/v1/bookings/", {"spec": body(), "idempotency_key": "k"}, format="json")
        .json()["national_id"]
    )
    other_firm = OrganizationFactory(kind="ai_firm")
    eve = UserFactory(membership__organization=other_firm, membership__role="admin")
    # Another firm and an unrelated operator: not found, not forbidden.
    for outsider in (eve, carol):
        client = api_as(outsider)
        assert client.get(f"/api/v1/bookings/{nid}/").status_code == 404
        assert client.post(f"/api/v1/bookings/{nid}/cancel/").status_code == 404
        assert client.get("/api/v1/bookings/").json()["results"] == []
    # The operator of the pool sees the booking, without the firm's specification, and may
    # not cancel it.
    seen = api_as(alice).get(f"/api/v1/bookings/{nid}/").json()
    assert seen["spec"] is None and seen["idempotency_key"] is None
    assert api_as(alice).post(f"/api/v1/bookings/{nid}/cancel/").status_code == 404
    assert api_as(dave).get(f"/api/v1/bookings/{nid}/").json()["spec"]["count"] == 4


def test_quotas_are_set_by_staff_and_read_by_the_firm(
    dave: Any, pat: Any, deepai: Any, rival: Any, api_as: Any
) -> None:
    body = {"max_concurrent_accelerators": 64, "max_accelerator_hours_per_month": None}
    assert api_as(dave).put("/api/v1/quotas/deepai/", body, format="json").status_code == 403
    set_ = api_as(pat).put("/api/v1/quotas/deepai/", body, format="json")
    assert set_.status_code == 200 and set_.json()["max_concurrent_accelerators"] == 64
    assert api_as(dave).get("/api/v1/quotas/deepai/").json()["max_concurrent_accelerators"] == 64
    assert api_as(dave).get("/api/v1/quotas/rival/").status_code == 404


def test_usage_is_summed_per_month(dave: Any, acme: Any, api_as: Any, active_pool: Any) -> None:
    import datetime as dt

    from brokers import services

    active_pool(acme, size=8)
    booking = services.booking_create(
        spec=spec(count=4),
        idempotency_key="u",
        actor=dave,
        door="api",
    )
    allocation = booking.allocations.get()
    began = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)
    services.usage_record(
        allocation=allocation, started_at=began, finished_at=began + dt.timedelta(hours=2)
    )
    services.usage_record(  # idempotent: recorded once per allocation
        allocation=allocation, started_at=began, finished_at=began + dt.timedelta(hours=9)
    )
    months = api_as(dave).get("/api/v1/usage/").json()["months"]
    assert months == [
        {"month": "2026-11", "currency": "CNY", "accelerator_hours": "8.0000", "cost": "80.00"}
    ]


def test_a_firm_without_a_quota_reads_no_limits_from_the_serializer(
    dave: Any, deepai: Any, api_as: Any
) -> None:
    """Responses come from serializers (issue 16): the same fields whether a row exists or not."""
    answer = api_as(dave).get("/api/v1/quotas/deepai/")
    assert answer.status_code == 200
    assert answer.json() == {
        "organization": "deepai",
        "max_concurrent_accelerators": None,
        "max_accelerator_hours_per_month": None,
    }
    assert api_as(dave).get("/api/v1/usage/").json() == {"organization": "deepai", "months": []}
