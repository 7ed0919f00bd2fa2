"""An operator registers a center and pools; identifiers, change log and lifecycle follow."""

import re
from typing import Any

import pytest
from django.core.management import call_command

from registry import services
from registry.choices import ALLOWED_TRANSITIONS, Door, Status
from registry.errors import IllegalTransition
from registry.models import ChangeRecord, Cluster, Hub, HubLink, LifecycleTransition, Pool
from registry.signals import pool_submitted
from tests.payloads import CENTER_BODY, pool_body


@pytest.mark.django_db(transaction=True)
def test_register_submit_and_the_change_log(alice: Any, api_as: Any) -> None:
    client = api_as(alice)
    submitted: list[int] = []

    def on_submit(sender: Any, pool_id: int, **kwargs: Any) -> None:
        submitted.append(pool_id)

    pool_submitted.connect(on_submit)
    try:
        center = client.post(
            "/api/v1/centers/", CENTER_BODY, format="json", HTTP_X_REQUEST_ID="req-42"
        )
        assert center.status_code == 201
        assert re.fullmatch(r"CN-NX-ZW-\d{4}", center.data["national_id"])
        pool = client.post("/api/v1/pools/", pool_body(center.data["national_id"]), format="json")
        assert pool.status_code == 201
        pool_id = pool.data["national_id"]
        assert pool_id == center.data["national_id"] + "-P01"
        assert pool.data["accelerators"] == 32
        assert sorted(pool.data["traits"]) == ["nvlink", "rdma"]
        response = client.post(f"/api/v1/pools/{pool_id}/submit/")
        assert response.status_code == 200 and response.data["status"] == "submitted"
    finally:
        pool_submitted.disconnect(on_submit)
    # Verification is announced once, after commit.
    assert submitted == [Pool.objects.get(national_id=pool_id).pk]
    everything = client.get("/api/v1/changes/", {"object_key": pool_id}).data["results"]
    # A verification worker of the suite may already have taken the pool up (submitted ->
    # verifying, door "worker"); the operator's own entries are these two.
    changes = [c for c in everything if c["door"] != "worker"]
    assert all(c["action"] == "transition" for c in everything if c["door"] == "worker")
    assert [c["action"] for c in changes] == ["transition", "create"]
    assert (
        changes[0]["before"] == {"status": "draft"} and changes[0]["after"]["status"] == "submitted"
    )
    assert all(c["door"] == "api" and c["actor"] == "alice" for c in changes)
    first = (
        ChangeRecord.objects.filter(object_key=center.data["national_id"]).order_by("id").first()
    )
    assert first.request_id == "req-42"
    # The center went along with its pool.
    assert (
        client.get(f"/api/v1/centers/{center.data['national_id']}/").data["status"] == "submitted"
    )


@pytest.mark.django_db
def test_national_identifiers_are_dense_per_cluster_and_never_change(
    alice: Any, carol: Any
) -> None:
    cluster = Cluster.objects.get(code="GAN")
    data = {
        "cluster": cluster,
        "latitude": 26.4,
        "longitude": 106.4,
        "pue": 1.2,
        "green_power_share": 0.5,
    }
    start = cluster.next_center_seq
    a = services.center_register(actor=alice, door=Door.API, data={**data, "name": "A"})
    c = services.center_register(actor=carol, door=Door.API, data={**data, "name": "C"})
    assert a.national_id == f"CN-GZ-GAN-{start:04d}"
    assert c.national_id == f"CN-GZ-GAN-{start + 1:04d}"
    services.center_update(center=a, actor=alice, door=Door.API, data={"name": "A2"})
    a.refresh_from_db()
    assert a.national_id == f"CN-GZ-GAN-{start:04d}"


def test_the_transition_table_is_closed() -> None:
    """Every target is a declared state, and retired is terminal."""
    assert set(ALLOWED_TRANSITIONS) == set(Status.values)
    for targets in ALLOWED_TRANSITIONS.values():
        assert targets <= set(Status.values)
    assert ALLOWED_TRANSITIONS[Status.RETIRED] == frozenset()


@pytest.mark.django_db
def test_every_transition_outside_the_table_is_refused(
    alice: Any, acme: Any, make_pool: Any
) -> None:
    refused = 0
    for source in Status.values:
        for target in Status.values:
            if target in ALLOWED_TRANSITIONS[source]:
                continue
            pool = make_pool(acme, source)
            with pytest.raises(IllegalTransition):
                services.lifecycle_transition(
                    obj=pool, to=target, reason="t", actor=None, door=Door.WORKER
                )
            pool.refresh_from_db()
            assert pool.status == source
            refused += 1
    assert LifecycleTransition.objects.count() == 0
    assert refused > 40


@pytest.mark.django_db
def test_operators_cannot_make_their_own_pools_active(
    alice: Any, acme: Any, make_pool: Any
) -> None:
    pool = make_pool(acme, Status.VERIFYING)
    with pytest.raises(IllegalTransition):
        services.pool_request_transition(
            pool=pool, to=Status.ACTIVE, reason="trust me", actor=alice, door=Door.API
        )
    # The worker (verification) may.
    services.lifecycle_transition(
        obj=pool, to=Status.ACTIVE, reason="verified", actor=None, door=Door.WORKER
    )
    assert LifecycleTransition.objects.get().reason == "verified"


@pytest.mark.django_db
def test_seeding_twice_keeps_8_hubs_10_clusters(api_as: Any) -> None:
    call_command("seed_national_topology", verbosity=0)
    call_command("seed_national_topology", verbosity=0)
    assert Hub.objects.count() == 8 and Cluster.objects.count() == 10
    assert HubLink.objects.count() == 28
    client = api_as(None)
    assert client.get("/api/v1/hubs/").data["count"] == 8
    assert client.get("/api/v1/clusters/").data["count"] == 10
    east = client.get("/api/v1/hubs/", {"region": "east"}).data["count"]
    assert east == 4
    zw = client.get("/api/v1/clusters/ZW/").data
    assert zw["hub"] == "NX"
