"""Portal forms keep the user's input on error and show each message next to its field, whether
the form or the service found the problem."""

import re
from typing import Any

import pytest

from registry.models import Accelerator, Center, ChangeRecord, Cluster, Pool
from tests.factories import CenterFactory

CENTER = {
    "cluster": "",
    "name": "Desert DC",
    "latitude": "37.5",
    "longitude": "105.2",
    "pue": "1.15",
    "green_power_share": "0.8",
    "agent_endpoint": "127.0.0.1:50061",
}


def _center_data(**overrides: Any) -> dict[str, Any]:
    return {**CENTER, "cluster": Cluster.objects.get(code="ZW").pk, **overrides}


def _field_errors(html: str, field: str) -> str:
    match = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', html, re.S)
    return match.group(1) if match else ""


@pytest.mark.django_db
def test_registering_a_center_gives_it_a_national_id_and_logs_the_portal_door(
    alice: Any, client_as: Any
) -> None:
    response = client_as(alice).post("/centers/new/", _center_data())
    center = Center.objects.get(name="Desert DC")
    assert response.status_code == 302 and response["Location"] == f"/centers/{center.national_id}/"
    assert re.fullmatch(r"CN-NX-ZW-\d{4}", center.national_id)
    assert center.operator.slug == "acme" and center.status == "draft"
    record = ChangeRecord.objects.get(object_key=center.national_id)
    assert record.door == "portal" and record.action == "create" and record.actor == alice


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"pue": "0.5"}, "pue", "greater than or equal to 1.0"),
        ({"green_power_share": "1.5"}, "green_power_share", "less than or equal to 1.0"),
        ({"latitude": "91"}, "latitude", "less than or equal to 90"),
        ({"name": ""}, "name", "required"),
        ({"cluster": "999999"}, "cluster", "valid choice"),
    ],
)
def test_a_bad_center_keeps_its_input_and_shows_the_field_message(
    overrides: dict[str, str], field: str, message: str, alice: Any, client_as: Any
) -> None:
    response = client_as(alice).post("/centers/new/", _center_data(**overrides))
    assert response.status_code == 200
    html = response.content.decode()
    assert message in _field_errors(html, field), html
    # What the user typed is still in the form.
    assert 'value="127.0.0.1:50061"' in html
    for name in ("pue", "latitude"):
        if name not in overrides:
            assert f'value="{CENTER[name]}"' in html
    assert not Center.objects.filter(name="Desert DC").exists()


@pytest.mark.django_db
def test_a_service_refusal_lands_on_its_field(alice: Any, acme: Any, client_as: Any) -> None:
    """The unique name per operator is checked by the service (the database constraint's
    message): the form shows it on the page, input kept."""
    CenterFactory(operator=acme, name="Desert DC")
    response = client_as(alice).post("/centers/new/", _center_data())
    assert response.status_code == 200
    html = response.content.decode()
    assert "already has a center with this name" in html
    assert 'value="Desert DC"' in html


def _pool_data(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "H100 pool",
        "accelerator": Accelerator.objects.get(slug="nvidia-h100-sxm").pk,
        "accelerators_per_node": "8",
        "nodes": "4",
        "intra_node_interconnect": "NVLink 4",
        "inter_node_interconnect": "InfiniBand NDR",
        "price_per_accelerator_hour": "12.50",
        "currency": "CNY",
        "declared_tflops_per_accelerator": "989.4",
        "traits": "nvlink, rdma",
        **overrides,
    }


@pytest.mark.django_db
def test_declaring_a_pool_through_the_form(alice: Any, acme: Any, client_as: Any) -> None:
    center = CenterFactory(operator=acme)
    response = client_as(alice).post(f"/centers/{center.national_id}/pools/new/", _pool_data())
    pool = Pool.objects.get(center=center)
    assert response.status_code == 302 and response["Location"] == f"/pools/{pool.national_id}/"
    assert pool.accelerators == 32 and pool.status == "draft"
    assert sorted(pool.traits.values_list("slug", flat=True)) == ["nvlink", "rdma"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"nodes": "0"}, "nodes", "greater than or equal to 1"),
        ({"currency": ""}, "currency", "needs a currency"),
        ({"price_per_accelerator_hour": "-1"}, "price_per_accelerator_hour", "greater than or"),
        ({"traits": "nv link!"}, "traits", "Not a tag"),
    ],
)
def test_a_bad_pool_keeps_its_input_and_shows_the_field_message(
    overrides: dict[str, str], field: str, message: str, alice: Any, acme: Any, client_as: Any
) -> None:
    center = CenterFactory(operator=acme)
    response = client_as(alice).post(
        f"/centers/{center.national_id}/pools/new/", _pool_data(**overrides)
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert message in _field_errors(html, field), html
    assert 'value="H100 pool"' in html and 'value="InfiniBand NDR"' in html
    assert not Pool.objects.filter(center=center).exists()


@pytest.mark.django_db
def test_a_duplicate_pool_name_is_refused_by_the_service_with_its_message(
    alice: Any, acme: Any, client_as: Any
) -> None:
    center = CenterFactory(operator=acme)
    client = client_as(alice)
    assert client.post(f"/centers/{center.national_id}/pools/new/", _pool_data()).status_code == 302
    again = client.post(f"/centers/{center.national_id}/pools/new/", _pool_data())
    assert again.status_code == 200
    assert b"already has a pool with this name" in again.content
    assert Pool.objects.filter(center=center).count() == 1


@pytest.mark.django_db
def test_a_bad_search_filter_is_shown_not_crashed(dave: Any, client_as: Any) -> None:
    response = client_as(dave).get("/capacity/?min_accelerators=-3&hub=XX")
    assert response.status_code == 200
    assert b"No pool matches" in response.content
    assert response.context["form"].errors.keys() == {"min_accelerators", "hub"}
