"""Property-level authorization, consumption limits, SSRF and the append-only audit log."""

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction

from registry import services
from registry.choices import Door, Status
from registry.models import ChangeRecord, Cluster, LifecycleTransition
from registry.netguard import resolve_public
from tests.figures import figure


@pytest.mark.django_db
def test_server_owned_fields_cannot_be_forged(
    alice: Any, acme: Any, make_pool: Any, api_as: Any
) -> None:
    pool = make_pool(acme)
    before = type(pool).objects.filter(pk=pool.pk).values().get()
    forged = {
        "status": "active",
        "national_id": "CN-XX-YY-0001-P01",
        "measured_tflops_per_accelerator": 99999,
        "verified_at": "2020-01-01T00:00:00Z",
        "accelerators": 100000,
        "status_reason": "trust me",
        "operator": "rival",
        "version": pool.version,
    }
    response = api_as(alice).patch(f"/api/v1/pools/{pool.national_id}/", forged, format="json")
    assert response.status_code == 200
    after = type(pool).objects.filter(pk=pool.pk).values().get()
    changed = {k for k in before if before[k] != after[k]} - {"version", "updated_at"}
    figure("S2.bopla", fields_forged=len(forged) - 1, changed=len(changed))
    assert changed == set()


@pytest.mark.django_db
def test_page_size_is_capped_and_huge_bodies_are_refused(alice: Any, api_as: Any) -> None:
    client = api_as(alice)
    page = client.get("/api/v1/accelerators/", {"limit": 10**6})
    assert page.status_code == 200
    assert "limit=500" in (page.data["next"] or "limit=500")
    body = json.dumps({"name": "x" * (10 * 1024 * 1024)})
    huge = client.post("/api/v1/centers/", body, content_type="application/json")
    assert huge.status_code in (400, 413)


HOSTILE = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "fe80::1",
    "fc00::1",
    "224.0.0.1",
    "240.0.0.1",
    "localhost",
    "100.64.0.1",
    "198.18.0.1",
    "[::1]",
    "0",
]


def test_private_and_local_targets_are_refused_outside_development() -> None:
    refused = 0
    for host in HOSTILE:
        with pytest.raises(ValidationError):
            resolve_public(host, 50051, field="agent_endpoint", allow_private=False)
        refused += 1
    figure("S7.ssrf", targets=len(HOSTILE), refused=refused, connected=0)
    assert refused == len(HOSTILE)


@pytest.mark.django_db
def test_an_agent_endpoint_on_a_private_address_is_refused_in_production(
    alice: Any, settings: Any, api_as: Any
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    body = {
        "name": "DC",
        "cluster": "ZW",
        "latitude": 37.5,
        "longitude": 105.2,
        "pue": 1.2,
        "green_power_share": 0.5,
    }
    response = api_as(alice).post(
        "/api/v1/centers/", {**body, "agent_endpoint": "169.254.169.254:80"}, format="json"
    )
    assert response.status_code == 400 and "agent_endpoint" in response.data


@pytest.mark.django_db(transaction=True)
def test_the_change_log_is_append_only(alice: Any) -> None:
    cluster = Cluster.objects.get(code="ZW")
    data = {
        "cluster": cluster,
        "name": "A",
        "latitude": 37.5,
        "longitude": 105.2,
        "pue": 1.2,
        "green_power_share": 0.5,
    }
    center = services.center_register(actor=alice, door=Door.API, data=data)
    services.lifecycle_transition(
        obj=center, to=Status.SUBMITTED, reason="t", actor=alice, door=Door.API
    )
    assert ChangeRecord.objects.count() == 2
    # A mutation that rolls back leaves no record.
    with pytest.raises(RuntimeError), transaction.atomic():
        services.center_update(center=center, actor=alice, door=Door.API, data={"pue": 1.5})
        raise RuntimeError
    assert ChangeRecord.objects.count() == 2
    refused = 0
    for attempt in (
        lambda: ChangeRecord.objects.update(after={"forged": True}),
        lambda: ChangeRecord.objects.all().delete(),
        lambda: LifecycleTransition.objects.update(reason="forged"),
        lambda: LifecycleTransition.objects.all().delete(),
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            attempt()
        refused += 1
    # Clearing a deleted user's reference is still allowed (ON DELETE SET NULL).
    ChangeRecord.objects.update(actor=None)
    rows = ChangeRecord.objects.count()
    figure("S10.audit", mutations=2, audit_rows=rows, tamper_refused=refused == 4)
    assert refused == 4


@pytest.mark.django_db
def test_a_value_the_database_refuses_is_bad_input_not_a_server_error(
    alice: Any, api_as: Any
) -> None:
    # Found by the fuzzer: a time-zone offset Python accepts and PostgreSQL does not.
    response = api_as(alice).get("/api/v1/changes/", {"since": "0653-09-10T09:48:22+22:32"})
    assert response.status_code == 400
