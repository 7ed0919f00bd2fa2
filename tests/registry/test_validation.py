"""Every write validates: 400 with field messages, and nothing half-written."""

from typing import Any

import pytest

from registry.models import Center, ChangeRecord, Pool
from tests.factories import CenterFactory
from tests.payloads import CENTER_BODY, pool_body

CENTER = CENTER_BODY


def _pool(target: Center, **overrides: Any) -> dict[str, Any]:
    return {**pool_body(target.national_id), **overrides}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"latitude": 95}, "latitude"),
        ({"longitude": -181}, "longitude"),
        ({"pue": 0.8}, "pue"),
        ({"green_power_share": 1.5}, "green_power_share"),
        ({"cluster": "NOPE"}, "cluster"),
        ({"agent_endpoint": "no-port-here"}, "agent_endpoint"),
        ({"agent_endpoint": "host:99999"}, "agent_endpoint"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_center_is_refused_with_the_field(
    alice: Any, api_as: Any, overrides: dict[str, Any], field: str
) -> None:
    response = api_as(alice).post("/api/v1/centers/", {**CENTER, **overrides}, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert Center.objects.count() == 0 and ChangeRecord.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"accelerators_per_node": 0}, "accelerators_per_node"),
        ({"nodes": -2}, "nodes"),
        ({"accelerator": "nvidia-z9000"}, "accelerator"),
        ({"currency": ""}, "currency"),
        ({"currency": "yuan"}, "currency"),
        ({"price_per_accelerator_hour": "-1"}, "price_per_accelerator_hour"),
        ({"declared_tflops_per_accelerator": 0}, "declared_tflops_per_accelerator"),
        ({"traits": ["not a slug!"]}, "traits"),
        ({"center": "CN-XX-YY-9999"}, "center"),
    ],
)
def test_a_bad_pool_is_refused_with_the_field(
    alice: Any, acme: Any, api_as: Any, overrides: dict[str, Any], field: str
) -> None:
    center = CenterFactory(operator=acme)
    response = api_as(alice).post("/api/v1/pools/", _pool(center, **overrides), format="json")
    assert response.status_code == 400, response.data
    assert field in response.data
    assert Pool.objects.count() == 0 and ChangeRecord.objects.count() == 0


@pytest.mark.django_db
def test_a_pool_cannot_be_declared_in_a_foreign_center(alice: Any, rival: Any, api_as: Any) -> None:
    foreign = CenterFactory(operator=rival)
    response = api_as(alice).post("/api/v1/pools/", _pool(foreign), format="json")
    assert response.status_code == 400
    assert "center" in response.data
    assert Pool.objects.count() == 0


@pytest.mark.django_db
def test_duplicate_names_are_refused(alice: Any, acme: Any, api_as: Any) -> None:
    client = api_as(alice)
    assert client.post("/api/v1/centers/", CENTER, format="json").status_code == 201
    again = client.post("/api/v1/centers/", CENTER, format="json")
    assert again.status_code == 400
    assert "already has a center with this name" in str(again.data)
    center = Center.objects.get()
    assert client.post("/api/v1/pools/", _pool(center), format="json").status_code == 201
    dup = client.post("/api/v1/pools/", _pool(center), format="json")
    assert dup.status_code == 400 and Pool.objects.count() == 1


@pytest.mark.django_db
def test_an_illegal_lifecycle_move_is_refused(alice: Any, acme: Any, api_as: Any) -> None:
    center = CenterFactory(operator=acme)
    client = api_as(alice)
    pool_id = client.post("/api/v1/pools/", _pool(center), format="json").data["national_id"]
    records = ChangeRecord.objects.count()
    response = client.post(f"/api/v1/pools/{pool_id}/transition/", {"to": "active"}, format="json")
    assert response.status_code == 400
    assert "status" in response.data
    assert Pool.objects.get(national_id=pool_id).status == "draft"
    assert ChangeRecord.objects.count() == records
    bogus = client.post(f"/api/v1/pools/{pool_id}/transition/", {"to": "flying"}, format="json")
    assert bogus.status_code == 400 and "to" in bogus.data


@pytest.mark.django_db
def test_hardware_of_an_active_pool_cannot_change_but_its_price_can(
    alice: Any, acme: Any, make_pool: Any, api_as: Any
) -> None:
    pool = make_pool(acme, "active")
    client = api_as(alice)
    url = f"/api/v1/pools/{pool.national_id}/"
    refused = client.patch(url, {"nodes": 400}, format="json")
    assert refused.status_code == 400 and "nodes" in refused.data
    assert (
        client.patch(url, {"price_per_accelerator_hour": "9.90"}, format="json").status_code == 200
    )
    pool.refresh_from_db()
    assert pool.nodes == 4 and str(pool.price_per_accelerator_hour) == "9.9000"


@pytest.mark.django_db
def test_a_stale_version_is_a_conflict(alice: Any, acme: Any, api_as: Any) -> None:
    client = api_as(alice)
    created = client.post("/api/v1/centers/", CENTER, format="json").data
    url = f"/api/v1/centers/{created['national_id']}/"
    first = client.patch(url, {"pue": 1.3, "version": created["version"]}, format="json")
    assert first.status_code == 200 and first.data["version"] == created["version"] + 1
    stale = client.patch(url, {"pue": 1.4, "version": created["version"]}, format="json")
    assert stale.status_code == 409
    assert Center.objects.get().pue == 1.3


@pytest.mark.django_db
def test_an_ai_firm_cannot_register_capacity(dave: Any, api_as: Any) -> None:
    response = api_as(dave).post("/api/v1/centers/", CENTER, format="json")
    assert response.status_code == 403
    assert Center.objects.count() == 0


@pytest.mark.django_db
def test_a_patch_that_changes_nothing_keeps_the_version_and_writes_no_record(
    alice: Any, acme: Any, api_as: Any
) -> None:
    client = api_as(alice)
    center = client.post("/api/v1/centers/", CENTER, format="json").data
    url = f"/api/v1/centers/{center['national_id']}/"
    pool = client.post("/api/v1/pools/", pool_body(center["national_id"]), format="json").data
    pool_url = f"/api/v1/pools/{pool['national_id']}/"
    records = ChangeRecord.objects.count()
    for target, body, read_only in (
        (url, center, {"national_id": "CN-X", "status": "active", "created_at": "2020-01-01"}),
        (pool_url, pool, {"national_id": "CN-Y", "status": "active", "verified_at": None}),
    ):
        for sent in (read_only, {"name": body["name"]}, {**read_only, "version": body["version"]}):
            answer = client.patch(target, sent, format="json")
            assert answer.status_code == 200, answer.content
            assert answer.data["version"] == body["version"] and answer.data["status"] == "draft"
    same_price = {"price_per_accelerator_hour": str(pool["price_per_accelerator_hour"])[:-2]}
    assert client.patch(pool_url, same_price, format="json").data["version"] == pool["version"]
    assert ChangeRecord.objects.count() == records
    # A real change still bumps the version and writes one record.
    changed = client.patch(url, {"pue": 1.3}, format="json")
    assert changed.data["version"] == center["version"] + 1
    assert ChangeRecord.objects.count() == records + 1


@pytest.mark.django_db
def test_the_api_root_lists_every_endpoint_as_api_links(client: Any) -> None:
    root = client.get("/api/v1/", HTTP_ACCEPT="application/json").json()
    for name in (
        "bookings",
        "capacity",
        "placements",
        "verification_runs",
        "usage",
        "availability",
        "centers",
        "pools",
        "changes",
        "tokens",
        "hubs",
        "webhooks",
    ):
        assert root[name].startswith("http://testserver/api/v1/"), (name, root.get(name))
    assert all("/api/v1/" in url or "/api/" in url for url in root.values())
