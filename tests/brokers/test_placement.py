"""Placement filters, scorers and their composition: ranked, explained, deterministic."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from brokers import services
from brokers.placement import filters, scorers
from brokers.placement.filters import Context, needed_on
from brokers.placement.network import Network
from brokers.placement.spec import Candidate, WorkloadSpec
from registry.models import Accelerator
from tests.brokers.conftest import spec

NOW = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


def candidate(**kwargs: Any) -> Candidate:
    values: dict[str, Any] = {
        "pool_id": 1,
        "national_id": "CN-NX-ZW-0001-P01",
        "center_id": 1,
        "center_national_id": "CN-NX-ZW-0001",
        "operator_id": 1,
        "hub": "NX",
        "accelerator": "nvidia-a100-80g",
        "accelerators": 32,
        "accelerators_per_node": 8,
        "free": 32,
        "price": Decimal("10"),
        "currency": "CNY",
        "tflops": 312.0,
        "memory_gb": 80.0,
        "intra_node_interconnect": "nvlink",
        "inter_node_interconnect": "infiniband",
        "green_power_share": 0.6,
        "verified_at": NOW,
    }
    values.update(kwargs)
    return Candidate(**values)


CTX = Context(network=Network({("BTH", "NX"): (25.0, 400.0)}))


def a_spec(**kwargs: Any) -> WorkloadSpec:
    return spec(earliest_start=NOW, **kwargs)


# --- filters alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_kwargs", "cand_kwargs", "code"),
    [
        ({}, {"accelerator": "nvidia-h100-sxm"}, "model.mismatch"),
        ({"hubs_allowed": ("BTH",)}, {}, "hub.not_allowed"),
        ({"hubs_excluded": ("NX",)}, {}, "hub.excluded"),
        ({"centers_excluded": ("CN-NX-ZW-0001",)}, {}, "center.excluded"),
        ({"price_cap": Decimal("5")}, {}, "price.over_cap"),
        ({"traits": ("fp8",)}, {}, "traits.missing"),
        ({"memory_gb_per_accelerator": 96.0}, {}, "memory.insufficient"),
        ({"min_accelerators_per_node": 16}, {}, "node.too_small"),
        ({"interconnect": "roce"}, {}, "interconnect.mismatch"),
        ({"latency_class": "interactive", "data_hub": "BTH"}, {}, "latency.too_far"),
        ({"count": 8}, {"free": 4}, "capacity.insufficient"),
    ],
)
def test_each_filter_rejects_with_its_code(
    spec_kwargs: dict[str, Any], cand_kwargs: dict[str, Any], code: str
) -> None:
    s = a_spec(**spec_kwargs)
    cand = candidate(**cand_kwargs)
    rejections = [f(s, cand, CTX) for f in filters.FILTERS]
    found = [r for r in rejections if r is not None]
    assert [r.reason_code for r in found] == [code]
    assert found[0].pool == cand.national_id and found[0].detail


def test_a_pool_that_fits_passes_every_filter() -> None:
    assert all(f(a_spec(), candidate(), CTX) is None for f in filters.FILTERS)


def test_fair_share_refuses_a_firm_above_its_share_only_when_scarce() -> None:
    ctx = Context(network=CTX.network, scarce=True, firm_share=0.6, fair_share_cap=0.5)
    assert filters.fair_share(a_spec(), candidate(), ctx).reason_code == "fair_share.exceeded"
    ctx.scarce = False
    assert filters.fair_share(a_spec(), candidate(), ctx) is None


def test_a100_equivalents_convert_by_measured_performance() -> None:
    s = a_spec(accelerator_model="", count=0, a100_equivalents=10.0)
    # An accelerator measured at half an A100 needs twice as many, in whole gangs.
    assert needed_on(s, candidate(tflops=156.0)) == 20
    assert needed_on(WorkloadSpec(**{**s.__dict__, "gang_size": 8}), candidate(tflops=156.0)) == 24


# --- scorers alone ---------------------------------------------------------------------------


def test_price_scores_the_cheapest_pool_highest() -> None:
    cheap, dear = candidate(price=Decimal("5")), candidate(price=Decimal("10"))
    ctx = Context(network=CTX.network)  # one context per request: it caches the cheapest
    assert scorers.price(a_spec(), cheap, ctx, [cheap, dear]) == 1.0
    assert scorers.price(a_spec(), dear, ctx, [cheap, dear]) == 0.5


def test_transfer_prefers_pools_near_the_data() -> None:
    s = a_spec(data_hub="BTH", data_gb=10_000)
    near = scorers.transfer(s, candidate(hub="BTH"), CTX, [])
    far = scorers.transfer(s, candidate(hub="NX"), CTX, [])
    assert near > far
    # 10 TB over 400 Gb/s is 200 s plus one round trip.
    assert CTX.network.transfer_seconds("BTH", "NX", 10_000) == pytest.approx(200.025)


def test_green_verification_load_and_fairness_scorers() -> None:
    assert scorers.green(a_spec(), candidate(green_power_share=0.9), CTX, []) == 0.9
    assert scorers.verification(a_spec(), candidate(verified_at=None), CTX, []) == 0.5
    assert scorers.load(a_spec(count=16), candidate(free=32), CTX, []) == 0.5
    scarce = Context(network=CTX.network, scarce=True, firm_held={1: 16})
    assert scorers.fairness(a_spec(), candidate(), scarce, []) == 0.5


def test_weights_are_configurable(settings: Any) -> None:
    settings.BROKER_PLACEMENT_WEIGHTS = {"training": {"green": 0.9}}
    assert scorers.weights_for("training")["green"] == 0.9
    assert scorers.weights_for("batch")["green"] == 0.3


# --- composed, against the database ------------------------------------------------------------


@pytest.mark.django_db
def test_placement_ranks_explains_and_is_deterministic(
    dave: Any, acme: Any, rival: Any, active_pool: Any
) -> None:
    cheap = active_pool(acme, size=8, price="8.00")
    dear = active_pool(rival, size=8, price="16.00")
    full = active_pool(acme, size=4, price="1.00")
    h100 = active_pool(acme, size=8, accelerator=Accelerator.objects.get(slug="nvidia-h100-sxm"))
    result = services.placement_preview(spec=spec(count=8), actor=dave)
    assert [o.parts[0].pool for o in result.options] == [cheap.national_id, dear.national_id]
    best = result.options[0]
    assert best.cost == Decimal("64.00") and best.explanation[0].startswith("chosen")
    # Pools of the model that the SQL prefilter dropped are counted per reason.
    assert result.prefiltered == {"capacity.insufficient": 1}
    assert full.national_id not in [o.parts[0].pool for o in result.options]
    again = services.placement_preview(spec=spec(count=8), actor=dave)
    assert [(o.parts[0].pool, o.score) for o in again.options] == [
        (o.parts[0].pool, o.score) for o in result.options
    ]
    assert h100.national_id not in [o.parts[0].pool for o in result.options]


@pytest.mark.django_db
def test_a_split_spreads_whole_gangs_over_at_most_max_centers(
    dave: Any, acme: Any, active_pool: Any
) -> None:
    for _ in range(3):
        active_pool(acme, size=8)
    result = services.placement_preview(
        spec=spec(count=16, gang_size=4, allow_split=True, max_centers=2), actor=dave
    )
    split = [o for o in result.options if len(o.parts) > 1]
    assert split and split[0].accelerators == 16 and len({p.center for p in split[0].parts}) == 2
    none = services.placement_preview(
        spec=spec(count=24, gang_size=4, allow_split=True, max_centers=2), actor=dave
    )
    assert none.options == []


@pytest.mark.django_db
def test_any_model_worth_n_a100s(dave: Any, acme: Any, active_pool: Any) -> None:
    h100 = active_pool(acme, size=8, accelerator=Accelerator.objects.get(slug="nvidia-h100-sxm"))
    result = services.placement_preview(
        spec=spec(accelerator_model="", count=0, a100_equivalents=12.0), actor=dave
    )
    # An H100 (989 TFLOPS) is worth about 3.17 A100s: 4 of them cover 12.
    assert [(o.parts[0].pool, o.accelerators) for o in result.options] == [(h100.national_id, 4)]


def test_bad_specs_name_their_fields() -> None:
    with pytest.raises(ValidationError) as bad:
        WorkloadSpec(count=0, accelerator_model="x", gang_size=0, data_gb=5).validated(
            now=timezone.now()
        )
    assert set(bad.value.message_dict) >= {"count", "gang_size", "data_hub"}


@pytest.mark.django_db
def test_explanations_from_the_snapshot_count_pools_that_can_never_fit(
    dave: Any, acme: Any, active_pool: Any, settings: Any
) -> None:
    from brokers.placement import catalog
    from registry.choices import Status

    for price in ("8.00", "9.00", "30.00"):
        active_pool(acme, size=8, price=price)
    active_pool(acme, size=16, price="8.00", cluster="ZJK")
    degraded = active_pool(acme, size=16)
    degraded.status = Status.DEGRADED
    degraded.save()
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60
    catalog.invalidate()
    result = services.placement_preview(
        spec=spec(count=16, price_cap=Decimal("20"), hubs_allowed=("NX",)), actor=dave
    )
    assert result.options == []
    # BTH pool: hub; 30.00 pool: price; two small ones: size; the degraded one: not active.
    assert result.prefiltered == {
        "hub.not_allowed": 1,
        "price.over_cap": 1,
        "capacity.insufficient": 2,
        "pool.not_active": 1,
    }
