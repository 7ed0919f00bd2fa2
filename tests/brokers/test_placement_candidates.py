"""Issue 11, defect 1: placement answered "nothing fits" while pools fitted.

The candidate step proposed the cheapest pools of the model whatever the request's other
constraints; when those were all rejected (``interconnect.mismatch`` x 64) the free pools that
fit were never looked at. Now every static constraint narrows the candidates (in SQL and in the
pool snapshot alike), and when a page of candidates yields no option the search goes on.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from brokers import services
from brokers.ledger import slot_bounds
from brokers.models import PoolSlot
from brokers.placement import catalog
from registry.models import Accelerator, Center, Cluster, Pool, Trait
from tests.brokers.conftest import next_hour, spec

# Comfortably more than BROKER_CANDIDATE_LIMIT (64) and BROKER_CANDIDATE_SCAN's first pages,
# few enough to build in a second.
CHEAP = 150
DEAR = 150
_serial = itertools.count(1)


def many_pools(
    operator: Any,
    n: int,
    *,
    price: str,
    cluster: str = "ZW",
    model: str = "nvidia-a100-80g",
    size: int = 8,
    per_node: int = 8,
    traits: tuple[str, ...] = (),
    **fields: Any,
) -> list[Pool]:
    """``n`` active pools (one per active center), created in bulk."""
    where = Cluster.objects.get(code=cluster)
    accelerator = Accelerator.objects.get(slug=model)
    first = next(_serial)
    for _ in range(n - 1):
        next(_serial)
    centers = Center.objects.bulk_create(
        Center(
            operator=operator,
            cluster=where,
            national_id=f"CN-B-{cluster}-{first + i:05d}",
            name=f"Bulk center {first + i}",
            latitude=37.5,
            longitude=105.2,
            pue=1.2,
            green_power_share=0.5,
            agent_endpoint="127.0.0.1:50061",
            status="active",
        )
        for i in range(n)
    )
    pools = Pool.objects.bulk_create(
        Pool(
            center=center,
            national_id=f"{center.national_id}-P01",
            name=f"Bulk pool {center.national_id}",
            accelerator=accelerator,
            accelerators_per_node=per_node,
            nodes=max(1, size // per_node),
            price_per_accelerator_hour=Decimal(price),
            currency="CNY",
            declared_tflops_per_accelerator=accelerator.bf16_dense_tflops or 300.0,
            status="active",
            **fields,
        )
        for center in centers
    )
    for slug in traits:
        trait, _ = Trait.objects.get_or_create(slug=slug)
        trait.pools.add(*pools)
    return pools


@pytest.fixture(params=["sql", "snapshot"])
def candidate_source(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    """Placement with candidates from SQL, or from the per-process pool snapshot."""
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60 if request.param == "snapshot" else 0
    catalog.invalidate()
    yield request.param
    catalog.invalidate()


# (what the request asks, fields of the cheap pools that lack it, of the dear ones that have it)
CONSTRAINTS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "interconnect": (
        {"interconnect": "nvlink"},
        {"intra_node_interconnect": "pcie"},
        {"intra_node_interconnect": "nvlink"},
    ),
    "interconnect-as-trait": (
        {"interconnect": "NVLink"},
        {"intra_node_interconnect": "pcie"},
        {"intra_node_interconnect": "", "traits": ("nvlink",)},
    ),
    "traits": ({"traits": ("fp8",)}, {}, {"traits": ("fp8",)}),
    "node-shape": (
        {"min_accelerators_per_node": 8},
        {"per_node": 4},
        {"per_node": 8},
    ),
    "memory": (
        # Any model worth 8 A100s with 80 GB each: the cheap L20s (48 GB) never qualify.
        {
            "accelerator_model": "",
            "count": 0,
            "a100_equivalents": 8.0,
            "memory_gb_per_accelerator": 80,
        },
        {"model": "nvidia-l20", "size": 32, "price": "2.00"},
        {"model": "nvidia-a100-80g"},
    ),
    "hubs": ({"hubs_allowed": ("BTH",)}, {"cluster": "ZW"}, {"cluster": "ZJK"}),
    "latency": (
        {"latency_class": "interactive", "data_hub": "BTH", "data_gb": 10.0},
        {"cluster": "SGN"},  # GBA: about 29 ms from Beijing
        {"cluster": "ZJK"},
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("constraint", list(CONSTRAINTS))
def test_a_constraint_the_cheapest_pools_lack_still_finds_the_pools_that_have_it(
    constraint: str, candidate_source: str, dave: Any, acme: Any
) -> None:
    asked, cheap_fields, dear_fields = CONSTRAINTS[constraint]
    many_pools(acme, CHEAP, **{"price": "5.00", **cheap_fields})
    dear = {p.national_id for p in many_pools(acme, DEAR, **{"price": "9.00", **dear_fields})}
    result = services.placement_preview(spec=spec(**{"count": 8, **asked}), actor=dave)
    assert result.options, (constraint, candidate_source, result.rejections[:3])
    assert all(part.pool in dear for o in result.options for part in o.parts)
    # The pools lacking the constraint were left out before any filter ran.
    assert not result.rejections, result.rejections[:3]


@pytest.mark.django_db
def test_the_issue_nvlink_request_finds_nvlink_among_cheaper_pcie_pools(
    candidate_source: str, dave: Any, acme: Any
) -> None:
    """The issue's reproduction, scaled down: half NVLink, the PCIe half cheaper."""
    many_pools(acme, CHEAP, price="5.00", intra_node_interconnect="pcie")
    nvlink = many_pools(acme, DEAR, price="9.00", intra_node_interconnect="nvlink")
    result = services.placement_preview(
        spec=spec(count=8, interconnect="nvlink"), actor=dave, max_options=5
    )
    assert len(result.options) == 5
    assert {p.pool for o in result.options for p in o.parts} <= {p.national_id for p in nvlink}
    # And booking from the specification books NVLink (it answered booking.no_placement).
    booking = services.booking_create(
        spec=spec(count=8, interconnect="nvlink"), idempotency_key="nv", actor=dave, door="api"
    )
    assert booking.allocations.get().pool.intra_node_interconnect == "nvlink"
    # The explanation counts the PCIe pools as what they are.
    assert result.prefiltered.get("interconnect.mismatch") == CHEAP


def _reserve(pool: Pool, n: int, start: dt.datetime, end: dt.datetime) -> None:
    first, last = slot_bounds(start, end)
    step = dt.timedelta(minutes=15)
    slots = []
    moment = first
    while moment < last:
        slots.append(PoolSlot(pool=pool, slot_start=moment, capacity=pool.accelerators, reserved=n))
        moment += step
    PoolSlot.objects.bulk_create(slots)


@pytest.mark.django_db
def test_when_a_page_of_candidates_is_all_rejected_the_search_goes_on(
    candidate_source: str, dave: Any, acme: Any, settings: Any
) -> None:
    """A rejection SQL cannot express (whole gangs of A100-equivalents: 6 free pass the
    prefilter's ``free x TFLOPS`` test, but 6 A100s in gangs of 4 need 8) rejects the first
    pages; the one pool with 8 free comes on a later page."""
    settings.BROKER_CANDIDATE_LIMIT = 4
    start = next_hour()
    cheap = many_pools(acme, 12, price="5.00")
    for pool in cheap:
        _reserve(pool, 2, start, start + dt.timedelta(hours=1))
    (dear,) = many_pools(acme, 1, price="9.00")
    want = spec(accelerator_model="", count=0, a100_equivalents=6.0, gang_size=4)
    result = services.placement_preview(spec=want, actor=dave)
    assert [[p.pool for p in o.parts] for o in result.options] == [[dear.national_id]]
    assert result.candidates_considered == 13
    assert {r.reason_code for r in result.rejections} == {"capacity.insufficient"}


@pytest.mark.django_db(transaction=True)
def test_grpc_place_finds_nvlink_among_cheaper_pcie_pools(
    dave: Any, acme: Any, settings: Any
) -> None:
    from brokers.client.client import BrokerClient, workload_spec
    from brokers.rpc.server import build_server
    from registry import services as registry_services

    with transaction.atomic():
        many_pools(acme, CHEAP, price="5.00", intra_node_interconnect="pcie")
        nvlink = {
            p.national_id
            for p in many_pools(acme, DEAR, price="9.00", intra_node_interconnect="nvlink")
        }
    runtime = build_server("127.0.0.1:0", max_workers=4)
    _, token = registry_services.token_create(user=dave, name="grpc")
    client = BrokerClient(f"127.0.0.1:{runtime.port}", token, timeout=20)
    try:
        reply = client.place(
            workload_spec(
                accelerator_model="nvidia-a100-80g",
                count=8,
                interconnect="nvlink",
                earliest_start=next_hour(),
            )
        )
    finally:
        client.close()
        runtime.stop(grace=0).wait()
    assert reply.options and {p.pool for o in reply.options for p in o.parts} <= nvlink
    assert reply.prefiltered["interconnect.mismatch"] == CHEAP
