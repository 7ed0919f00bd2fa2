"""The public national dashboard: what it counts, what it draws, and that it stays a handful of
queries however much capacity is registered."""

from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry.choices import Status
from registry.models import Accelerator


@pytest.mark.django_db
def test_the_dashboard_counts_declared_capacity_and_the_verified_share(
    acme: Any, rival: Any, make_pool: Any, client_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE)  # 32 A100s, verified
    make_pool(rival, Status.SUBMITTED, nodes=2)  # 16 declared, not verified
    make_pool(acme, Status.DRAFT)  # drafts are not declared to the platform yet
    response = client_as(None).get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<div class="big" id="total-accelerators">48</div>' in html
    assert '<div class="big" id="verified-share">67%</div>' in html
    # The factory's centers are in Zhongwei (NX hub, ZW cluster).
    assert 'data-hub="NX"' in html and 'data-cluster="ZW"' in html
    by_hub = {r["hub"]: r for r in response.context["summary"]["by_hub"]}
    assert by_hub["NX"]["accelerators"] == 48


@pytest.mark.django_db
def test_the_map_draws_every_hub_and_link_sized_by_capacity(
    acme: Any, make_pool: Any, client_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE, nodes=100)
    response = client_as(None).get("/")
    national_map = response.context["map"]
    assert len(national_map["hubs"]) == 8 and len(national_map["clusters"]) == 10
    assert len(national_map["links"]) == 28
    radius = {h["code"]: h["r"] for h in national_map["hubs"]}
    # Only Ningxia has capacity: its circle is the largest, empty hubs keep the floor size.
    assert radius["NX"] == max(radius.values()) and radius["BTH"] == min(radius.values())
    colors = {h["code"]: h["color"] for h in national_map["hubs"]}
    assert colors["BTH"] != colors["NX"]  # east and west differ
    html = response.content.decode()
    assert html.count("<line ") >= 28 and 'class="national-map"' in html
    # Every hub sits inside the drawing.
    for hub in national_map["hubs"]:
        assert 0 < hub["x"] < national_map["width"] and 0 < hub["y"] < national_map["height"]


@pytest.mark.django_db
def test_capacity_by_model_and_by_origin(acme: Any, make_pool: Any, client_as: Any) -> None:
    ascend = Accelerator.objects.get(slug="huawei-ascend-910b")
    make_pool(acme, Status.ACTIVE, accelerator=ascend, nodes=1)
    make_pool(acme, Status.ACTIVE)
    response = client_as(None).get("/")
    bars = {b.label: b for b in response.context["by_model_chart"].bars}
    assert bars["Huawei Ascend 910B"].value == 8 and bars["NVIDIA A100 80GB SXM"].value == 32
    origins = {b.label for b in response.context["by_origin_chart"].bars}
    assert origins == {"Domestic", "Imported"}


@pytest.mark.django_db
def test_the_dashboard_is_a_handful_of_queries_whatever_the_data(
    acme: Any, rival: Any, make_pool: Any, client_as: Any
) -> None:
    client = client_as(None)
    make_pool(acme, Status.ACTIVE)
    cache.clear()  # count the national aggregates too, not only the live capacity figures
    with CaptureQueriesContext(connection) as few:
        client.get("/")
    for _ in range(10):
        make_pool(rival, Status.ACTIVE)
    cache.clear()
    with CaptureQueriesContext(connection) as many:
        client.get("/")
    assert len(many) == len(few) <= 12, [q["sql"][:80] for q in many.captured_queries]


@pytest.mark.django_db
def test_the_one_query_national_capacity_agrees_with_national_summary(
    acme: Any, rival: Any, make_pool: Any
) -> None:
    from registry import selectors

    ascend = Accelerator.objects.get(slug="huawei-ascend-910b")
    make_pool(acme, Status.ACTIVE)
    make_pool(acme, Status.SUBMITTED, accelerator=ascend, nodes=3)
    make_pool(rival, Status.DEGRADED, nodes=7)
    make_pool(rival, Status.DRAFT)
    fast, reference = selectors.national_capacity(), selectors.national_summary()
    for key in ("totals", "centers", "by_hub", "by_accelerator", "by_origin"):
        assert fast[key] == reference[key], key
    assert sum(r["accelerators"] for r in fast["by_cluster"]) == reference["totals"]["accelerators"]


@pytest.mark.django_db
def test_the_dashboard_shows_utilization_and_where_demand_is_served(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    from verification.services import PoolBeat, heartbeat_record

    pool = world["own_active"]
    heartbeat_record(
        actor=personas["alice"],
        agent_id="a",
        sent_at=None,
        pools=[PoolBeat(pool.national_id, 0.5, 32, 16)],
    )
    response = client_as(None).get("/")
    chart = response.context["utilization_chart"]
    assert not chart["empty"] and chart["dots"][0]["v"] == 50.0
    # The world's booking: data in Beijing-Tianjin-Hebei, served in Ningxia (east data, west
    # compute): 8 accelerators for 2 hours.
    assert response.context["flows"] == [
        {
            "origin": "BTH",
            "served": "NX",
            "allocations": 1,
            "accelerator_hours": 16.0,
            "origin_name": "Beijing-Tianjin-Hebei",
            "served_name": "Ningxia",
        }
    ]
    assert response.context["east_to_west_share"] == 1.0
    assert b'data-flow="BTH-NX"' in response.content
    assert len(response.context["map"]["flows"]) == 1


@pytest.mark.django_db(transaction=True)
def test_stale_national_activity_is_served_at_once_and_refreshed_in_the_background(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    import time

    from django.utils import timezone

    from brokers import views

    first = views.national_activity()
    assert [f["served"] for f in first["flows"]] == ["NX"]
    # A minute later: the stale figures answer the request; a thread recomputes them.
    stale = {**first, "flows": [], "computed_at": timezone.now() - timezone.timedelta(minutes=2)}
    cache.set(views.ACTIVITY_KEY, stale, 3600)
    assert views.national_activity()["flows"] == []
    deadline = time.monotonic() + 20
    while cache.get(views.ACTIVITY_KEY)["flows"] == [] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [f["served"] for f in cache.get(views.ACTIVITY_KEY)["flows"]] == ["NX"]
    assert cache.get(f"{views.ACTIVITY_KEY}:refreshing") is None
