"""Verification's REST endpoints: who sees runs, heartbeats, availability and downtimes, and who
may ask for a re-verification. A foreign object is always a 404."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone

from registry.choices import Status
from registry.models import ChangeRecord
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory
from verification.choices import Trigger
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_throttles() -> None:
    cache.clear()


@pytest.fixture
def acme_pool(acme: Any) -> Any:
    center = force_status(CenterFactory(operator=acme), Status.ACTIVE)
    return force_status(PoolFactory(center=center), Status.ACTIVE)


@pytest.fixture
def acme_run(acme_pool: Any) -> VerificationRun:
    return VerificationRun.objects.create(
        pool=acme_pool, trigger=Trigger.SUBMITTED, state="passed", seed="42", n=192, k=16
    )


# --- verification runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "listed", "detail"),
    [("alice", 1, 200), ("bob", 1, 200), ("pat", 1, 200), ("carol", 0, 404), ("dave", 0, 404)],
)
def test_runs_are_the_operators_and_the_platforms(
    personas: Any, api_as: Any, acme_run: Any, persona: str, listed: int, detail: int
) -> None:
    client = api_as(personas[persona])

    listing = client.get("/api/v1/verification-runs/")
    one = client.get(f"/api/v1/verification-runs/{acme_run.run_id}/")

    assert listing.status_code == 200 and listing.json()["count"] == listed
    assert one.status_code == detail
    if detail == 200:
        assert one.json()["seed"] == "42" and one.json()["pool"] == acme_run.pool.national_id


def test_runs_need_authentication(api_as: Any, acme_run: Any) -> None:
    assert api_as(None).get("/api/v1/verification-runs/").status_code == 401


def test_runs_filter_by_pool(api_as: Any, alice: Any, acme_run: Any, acme: Any) -> None:
    other = force_status(PoolFactory(center=CenterFactory(operator=acme)), Status.ACTIVE)
    VerificationRun.objects.create(pool=other, trigger=Trigger.SUBMITTED, state="failed")

    answer = api_as(alice).get(f"/api/v1/verification-runs/?pool={acme_run.pool.national_id}")

    assert [r["run_id"] for r in answer.json()["results"]] == [str(acme_run.run_id)]


# --- reverify --------------------------------------------------------------------------------


def reverify(client: Any, pool: Any) -> Any:
    return client.post(f"/api/v1/pools/{pool.national_id}/reverify/")


def test_an_operator_asks_for_a_reverification_once(api_as: Any, bob: Any, acme_pool: Any) -> None:
    client = api_as(bob)

    first = reverify(client, acme_pool)
    second = reverify(client, acme_pool)

    assert first.status_code == 202 and first.json()["trigger"] == "operator_request"
    assert second.status_code == 200 and second.json()["run_id"] == first.json()["run_id"]
    assert VerificationRun.objects.filter(pool=acme_pool).count() == 1


@pytest.mark.parametrize(("persona", "code"), [("carol", 404), ("dave", 403), ("anon", 401)])
def test_others_cannot_ask_for_a_reverification(
    personas: Any, api_as: Any, acme_pool: Any, persona: str, code: int
) -> None:
    assert reverify(api_as(personas[persona]), acme_pool).status_code == code
    assert not VerificationRun.objects.exists()


def test_a_draft_pool_cannot_be_reverified(api_as: Any, alice: Any, acme: Any) -> None:
    draft = PoolFactory(center=CenterFactory(operator=acme))

    answer = reverify(api_as(alice), draft)

    assert answer.status_code == 400 and "status" in answer.json()


def test_reverify_is_rate_limited(
    api_as: Any, alice: Any, acme_pool: Any, settings: Any, monkeypatch: Any
) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "reverify": "2/hour"}
    # DRF reads the rates once, at import: patch where the throttle looks them up.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", rates)
    client = api_as(alice)

    codes = [reverify(client, acme_pool).status_code for _ in range(3)]

    assert codes == [202, 200, 429]


# --- heartbeats and availability ---------------------------------------------------------------


def test_heartbeats_are_the_operators(api_as: Any, personas: Any, acme_pool: Any) -> None:
    Heartbeat.objects.create(
        pool=acme_pool,
        time=timezone.now(),
        agent_id="a",
        utilization=0.5,
        accelerators_healthy=32,
        accelerators_busy=16,
    )
    url = f"/api/v1/heartbeats/?pool={acme_pool.national_id}"

    counts = {p: api_as(personas[p]).get(url).json()["count"] for p in ("alice", "pat", "carol")}

    assert counts == {"alice": 1, "pat": 1, "carol": 0}


def test_availability_of_a_listed_pool_is_public(api_as: Any, acme_pool: Any) -> None:
    answer = api_as(None).get(f"/api/v1/availability/?pool={acme_pool.national_id}&days=3")

    assert answer.status_code == 200
    assert len(answer.json()["days"]) == 3


def test_availability_of_a_draft_pool_is_the_operators(
    api_as: Any, alice: Any, carol: Any, acme: Any
) -> None:
    draft = PoolFactory(center=CenterFactory(operator=acme))
    url = f"/api/v1/availability/?pool={draft.national_id}"

    assert api_as(alice).get(url).status_code == 200
    assert api_as(carol).get(url).status_code == 404


@pytest.mark.parametrize("query", ["", "?pool=X&days=0", "?pool=X&days=91"])
def test_availability_checks_its_query(api_as: Any, query: str) -> None:
    assert api_as(None).get(f"/api/v1/availability/{query}").status_code == 400


# --- downtimes -----------------------------------------------------------------------------------


def window(**fields: Any) -> dict[str, Any]:
    start = timezone.now() + dt.timedelta(days=1)
    return {"start": start, "end": start + dt.timedelta(hours=4), "reason": "power", **fields}


def test_an_operator_announces_downtime_for_its_pool(
    api_as: Any, bob: Any, acme_pool: Any, acme: Any
) -> None:
    answer = api_as(bob).post("/api/v1/downtimes/", window(pool=acme_pool.national_id))

    assert answer.status_code == 201, answer.json()
    assert answer.json()["pool"] == acme_pool.national_id
    record = ChangeRecord.objects.get(object_type="verification.scheduleddowntime")
    assert record.owner == acme and record.door == "api"


def test_an_operator_announces_downtime_for_its_center(
    api_as: Any, alice: Any, acme_pool: Any
) -> None:
    center_id = acme_pool.center.national_id
    answer = api_as(alice).post("/api/v1/downtimes/", window(center=center_id))

    assert answer.status_code == 201 and answer.json()["center"] == center_id


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ("foreign", "pool"),
        ("missing", "pool"),
        ("both", "non_field_errors"),
        ("backwards", "end"),
    ],
)
def test_bad_downtimes_are_refused_on_their_field(
    api_as: Any, carol: Any, alice: Any, acme_pool: Any, fields: str, field: str
) -> None:
    if fields == "foreign":
        client, body = api_as(carol), window(pool=acme_pool.national_id)
    elif fields == "missing":
        client, body = api_as(alice), window(pool="CN-XX-XX-9999-P01")
    elif fields == "both":
        body = window(pool=acme_pool.national_id, center=acme_pool.center.national_id)
        client = api_as(alice)
    else:
        body = window(pool=acme_pool.national_id)
        body["end"] = body["start"] - dt.timedelta(hours=1)
        client = api_as(alice)

    answer = client.post("/api/v1/downtimes/", body)

    assert answer.status_code == 400
    assert field in answer.json(), answer.json()
    if fields in ("foreign", "missing"):
        assert answer.json()["pool"] == ["Unknown pool."]
    assert not ScheduledDowntime.objects.exists()


def test_a_foreign_downtime_is_not_found(
    api_as: Any, alice: Any, carol: Any, acme_pool: Any
) -> None:
    created = api_as(alice).post("/api/v1/downtimes/", window(pool=acme_pool.national_id))
    url = f"/api/v1/downtimes/{created.json()['id']}/"

    assert api_as(carol).get(url).status_code == 404
    assert api_as(carol).delete(url).status_code == 404
    assert api_as(alice).delete(url).status_code == 204
    assert not ScheduledDowntime.objects.exists()
