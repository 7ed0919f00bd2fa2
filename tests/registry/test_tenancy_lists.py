"""List endpoints show each tenant only what it may see."""

from typing import Any

import pytest

from registry import services
from registry.choices import Door, Status
from registry.models import Cluster


def _ids(response: Any) -> set[str]:
    assert response.status_code == 200
    return {
        row.get("national_id") or row.get("slug") or row.get("object_key")
        for row in response.data["results"]
    }


@pytest.mark.django_db
def test_pool_list_hides_other_operators_drafts(
    alice: Any, carol: Any, dave: Any, make_pool: Any, acme: Any, rival: Any, api_as: Any
) -> None:
    own_draft = make_pool(acme)
    rival_draft = make_pool(rival)
    rival_active = make_pool(rival, Status.ACTIVE)
    assert _ids(api_as(alice).get("/api/v1/pools/")) == {
        own_draft.national_id,
        rival_active.national_id,
    }
    assert _ids(api_as(carol).get("/api/v1/pools/")) == {
        rival_draft.national_id,
        rival_active.national_id,
    }
    assert _ids(api_as(dave).get("/api/v1/pools/")) == {rival_active.national_id}
    assert _ids(api_as(None).get("/api/v1/pools/")) == {rival_active.national_id}


@pytest.mark.django_db
def test_agent_endpoint_is_shown_only_to_its_operator(
    alice: Any, carol: Any, make_pool: Any, acme: Any, api_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    url = f"/api/v1/centers/{pool.center.national_id}/"
    assert api_as(alice).get(url).data["agent_endpoint"] == pool.center.agent_endpoint
    assert api_as(carol).get(url).data["agent_endpoint"] is None


@pytest.mark.django_db
def test_organizations_list_only_the_callers_own(
    alice: Any, carol: Any, pat: Any, api_as: Any
) -> None:
    assert _ids(api_as(alice).get("/api/v1/organizations/")) == {"acme"}
    assert _ids(api_as(carol).get("/api/v1/organizations/")) == {"rival"}
    assert {"acme", "rival"} <= _ids(api_as(pat).get("/api/v1/organizations/"))
    assert api_as(carol).get("/api/v1/organizations/acme/").status_code == 404
    assert api_as(None).get("/api/v1/organizations/").status_code == 401


@pytest.mark.django_db
def test_change_log_shows_only_own_objects(alice: Any, carol: Any, api_as: Any) -> None:
    cluster = Cluster.objects.get(code="ZW")
    data = {
        "cluster": cluster,
        "latitude": 37.5,
        "longitude": 105.2,
        "pue": 1.2,
        "green_power_share": 0.5,
    }
    mine = services.center_register(actor=alice, door=Door.API, data={**data, "name": "A"})
    theirs = services.center_register(actor=carol, door=Door.API, data={**data, "name": "C"})
    assert _ids(api_as(alice).get("/api/v1/changes/")) == {mine.national_id}
    assert _ids(api_as(carol).get("/api/v1/changes/")) == {theirs.national_id}
    foreign = api_as(alice).get("/api/v1/changes/", {"object_key": theirs.national_id})
    assert foreign.data["count"] == 0
