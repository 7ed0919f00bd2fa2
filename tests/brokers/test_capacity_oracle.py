"""The capacity listing against a brute-force oracle, with and without the pool snapshot.

``services.capacity_query`` (the REST ``/api/v1/capacity/`` and gRPC ``QueryCapacity`` doors)
has one path, ``catalog.capacity_page``: the pool snapshot, or the database when a process keeps
none, proposes bookable pools by national id; status and free capacity are read fresh. This test
draws an inventory (the placement oracle's: models, clusters, fabrics, prices, pools and centers
that are not active, slots partly booked around the window) and a query (model, hub, cluster,
interconnect, price cap, least free count, page size), walks every page both ways and compares
each with plain Python over the ORM: every listed pool is bookable, passes every filter and has
exactly the free count the slots leave; every such pool is listed once, in national-id order;
every page but the last is full.

``make test`` runs ``EXAMPLES`` examples from a fixed seed; ``CAPACITY_ORACLE_EXAMPLES=500``
runs a longer random search (``--hypothesis-show-statistics`` shows what they covered).
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from hypothesis import event, given
from hypothesis import strategies as st

from brokers import ledger, services
from brokers.models import PoolSlot
from brokers.placement import catalog
from registry.models import Pool
from tests.brokers.test_placement_oracle import (
    MODELS,
    build_inventory,
    oracle_settings,
    pool_strategy,
)

pytestmark = pytest.mark.django_db

LONG_RUN = int(os.environ.get("CAPACITY_ORACLE_EXAMPLES", "0"))
EXAMPLES = LONG_RUN or 30
# Queries asked of each drawn inventory (and one without filters).
QUERIES = 4
SEED = 20260214
SLOT = dt.timedelta(minutes=15)

FILTERS = ["model", "hub", "cluster", "interconnect", "price", "min_free"]
NO_FILTERS: dict[str, Any] = {
    "accelerator_model": "",
    "hub": "",
    "cluster": "",
    "interconnect": "",
    "max_price": None,
    "min_free": 1,
}


def draw_query(data: st.DataObject, made: list[Pool]) -> dict[str, Any]:
    """One or two filters besides the window (more would leave most listings empty), with
    values taken from the drawn pools, so that listings are seldom empty and the edges (a pool
    whose free count is exactly the least asked for) come up."""
    kinds = data.draw(st.permutations(FILTERS))[: data.draw(st.integers(1, 2))]
    query = dict(NO_FILTERS)
    if "model" in kinds:
        query["accelerator_model"] = data.draw(
            st.sampled_from(sorted({p.accelerator.slug for p in made}) + MODELS[:1])
        )
    if "hub" in kinds:
        query["hub"] = data.draw(st.sampled_from(sorted({p.center.cluster.hub.code for p in made})))
    if "cluster" in kinds:
        query["cluster"] = data.draw(st.sampled_from(sorted({p.center.cluster.code for p in made})))
    if "interconnect" in kinds:
        # "link" is part of "nvlink"; "NVLink" asks in another case.
        fabrics = {p.intra_node_interconnect for p in made} | {
            p.inter_node_interconnect for p in made
        }
        query["interconnect"] = data.draw(
            st.sampled_from(sorted(fabrics - {""}) + ["NVLink", "link", "roce"])
        )
    if "price" in kinds:
        prices = {p.price_per_accelerator_hour for p in made} - {None}
        query["max_price"] = data.draw(st.sampled_from(sorted(prices) or [Decimal("4.00")]))
    if "min_free" in kinds:
        query["min_free"] = data.draw(st.sampled_from(sorted({p.accelerators for p in made})))
    return query


Listed = tuple[str, int, str, str]  # pool, free accelerators, hub, cluster


def oracle(query: dict[str, Any], start: dt.datetime, end: dt.datetime) -> list[Listed]:
    """Every bookable pool that passes the query, with its free count, hub and cluster, by
    national id."""
    first, last = ledger.slot_bounds(start, end)
    wanted = query["interconnect"].lower()
    out = []
    for pool in Pool.objects.select_related("center__cluster__hub", "accelerator"):
        if pool.status != "active" or pool.center.status != "active":
            continue
        if query["accelerator_model"] and pool.accelerator.slug != query["accelerator_model"]:
            continue
        if query["hub"] and pool.center.cluster.hub.code != query["hub"]:
            continue
        if query["cluster"] and pool.center.cluster.code != query["cluster"]:
            continue
        price, cap = pool.price_per_accelerator_hour, query["max_price"]
        if cap is not None and (price is None or price > cap):
            continue
        fabrics = f"{pool.intra_node_interconnect} {pool.inter_node_interconnect}".lower()
        if wanted and wanted not in fabrics:
            continue
        used = PoolSlot.objects.filter(
            pool=pool, slot_start__gte=first, slot_start__lt=last
        ).aggregate(n=Max("reserved"))["n"]
        free = max(0, pool.accelerators - (used or 0))
        if free >= query["min_free"]:
            cluster = pool.center.cluster
            out.append((pool.national_id, free, cluster.hub.code, cluster.code))
    return sorted(out)


def every_page(
    actor: Any, query: dict[str, Any], start: dt.datetime, end: dt.datetime, page_size: int
) -> list[Listed]:
    listed: list[Listed] = []
    token = ""
    while True:
        rows, token = services.capacity_query(
            actor=actor, start=start, end=end, page_size=page_size, page_token=token, **query
        )
        assert len(rows) <= page_size
        if token:
            # A page that says another follows is full.
            assert len(rows) == page_size and token == rows[-1].pool
        listed += [(r.pool, r.free, r.hub, r.cluster) for r in rows]
        if not token:
            return listed


@oracle_settings(EXAMPLES, None if LONG_RUN else SEED)
@given(
    pools=st.lists(pool_strategy, min_size=3, max_size=12),
    data=st.data(),
    page_size=st.integers(1, 4),
    start_slots=st.integers(0, 8),
    slots=st.sampled_from([1, 4, 7, 16]),
)
def test_the_capacity_listing_agrees_with_the_oracle_with_and_without_a_snapshot(
    pools: list[dict[str, Any]],
    data: st.DataObject,
    page_size: int,
    start_slots: int,
    slots: int,
    acme: Any,
    dave: Any,
    settings: Any,
) -> None:
    now = timezone.now()
    base = now.replace(minute=(now.minute // 15) * 15, second=0, microsecond=0) + dt.timedelta(
        hours=1
    )
    start = base + start_slots * SLOT
    end = start + slots * SLOT
    with transaction.atomic():
        made = build_inventory(pools, acme, base)
        try:
            # Several queries of one inventory: the filters alone and in pairs, and none.
            for query in [NO_FILTERS] + [draw_query(data, made) for _ in range(QUERIES)]:
                expected = oracle(query, start, end)
                event(f"pools listed: {min(len(expected), 4)}{'+' if len(expected) >= 4 else ''}")
                event(f"pages: {min(-(-len(expected) // page_size), 3)}")
                if any(row[1] == query["min_free"] for row in expected):
                    event("a pool with exactly the least free count asked for")
                for snapshot in (False, True):
                    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if snapshot else 0
                    catalog.invalidate()
                    listed = every_page(dave, query, start, end, page_size)
                    assert listed == expected, (snapshot, query, page_size)
        finally:
            catalog.invalidate()
            transaction.set_rollback(True)


@oracle_settings(max(EXAMPLES // 3, 5), None if LONG_RUN else SEED)
@given(
    pools=st.lists(pool_strategy, min_size=3, max_size=12),
    start_slots=st.integers(0, 8),
    slots=st.sampled_from([1, 4, 7, 16]),
)
def test_the_portal_search_shows_the_listings_free_counts(
    pools: list[dict[str, Any]], start_slots: int, slots: int, acme: Any, dave: Any, client: Any
) -> None:
    """The portal's capacity search lists the registry's search, not the listing, but its free
    figure is the listing's: the oracle's count for every bookable pool (also one with nothing
    free, which the listing leaves out), none for a pool that cannot be booked."""
    now = timezone.now()
    base = now.replace(minute=(now.minute // 15) * 15, second=0, microsecond=0) + dt.timedelta(
        hours=1
    )
    start = base + start_slots * SLOT
    client.force_login(dave)
    with transaction.atomic():
        made = build_inventory(pools, acme, base)
        try:
            expected = {
                pool: free
                for pool, free, _, _ in oracle(
                    {**NO_FILTERS, "min_free": 0}, start, start + slots * SLOT
                )
            }
            page = client.get(
                "/capacity/",
                {"status": "", "start": start.strftime("%Y-%m-%dT%H:%M"), "hours": slots / 4},
            ).context["page"]
            shown = {p.national_id: p.free for p in page}
            assert set(shown) == {p.national_id for p in made}
            assert shown == {p.national_id: expected.get(p.national_id) for p in made}
            if any(free is None for free in shown.values()):
                event("a pool that cannot be booked shows no free figure")
            if 0 in shown.values():
                event("a bookable pool with nothing free")
        finally:
            transaction.set_rollback(True)
