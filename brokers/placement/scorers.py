"""Placement scorers: each rates one pool for the workload between 0 (worst) and 1 (best).

A scorer is ``(spec, candidate, context, peers) -> float``; ``peers`` are the pools that
survived the filters, so a scorer can normalise (the cheapest pool scores 1 on price). Weights
per latency class live in :data:`DEFAULT_WEIGHTS` and can be overridden with the
``BROKER_PLACEMENT_WEIGHTS`` setting; the engine composes them in one place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from django.conf import settings

from brokers.choices import LatencyClass
from brokers.placement.filters import Context, needed_on
from brokers.placement.spec import Candidate, WorkloadSpec

Scorer = Callable[[WorkloadSpec, Candidate, Context, Sequence[Candidate]], float]

# A verification older than this no longer earns full marks.
VERIFICATION_FRESH = dt.timedelta(days=7)


def unit_price(spec: WorkloadSpec, cand: Candidate) -> float:
    """Price per unit of work: per accelerator-hour, or per A100-equivalent-hour (any model),
    at the price the spec's booking class pays (spot: the spot price)."""
    paid = cand.price_for(spec.booking_class)
    if paid is None:
        return float("inf")
    if spec.accelerator_model:
        return float(paid)
    per = cand.a100_per_accelerator
    return float(paid) / per if per else float("inf")


def price(spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]) -> float:
    # Once per request, not per candidate: scoring stays linear in the candidates.
    if "cheapest" not in ctx.cache:
        ctx.cache["cheapest"] = min((unit_price(spec, p) for p in peers), default=0.0)
    cheapest = ctx.cache["cheapest"]
    mine = unit_price(spec, cand)
    if mine == float("inf"):
        return 0.0
    return 1.0 if mine <= 0 else cheapest / mine


def transfer(
    spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]
) -> float:
    seconds = ctx.network.transfer_seconds(spec.data_hub, cand.hub, spec.data_gb)
    # An hour of transfer halves the score.
    return 1.0 / (1.0 + seconds / 3600)


def green(spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]) -> float:
    return max(0.0, min(1.0, cand.green_power_share))


def verification(
    spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]
) -> float:
    if cand.verified_at is None:
        return 0.5
    age = dt.datetime.now(dt.UTC) - cand.verified_at
    return 1.0 if age <= VERIFICATION_FRESH else max(0.5, 1.0 - age / (VERIFICATION_FRESH * 8))


def load(spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]) -> float:
    """Prefer pools that stay less loaded after this workload (spreads bookings)."""
    if not cand.accelerators:
        return 0.0
    left = cand.free - min(cand.free, needed_on(spec, cand))
    return left / cand.accelerators


def fairness(
    spec: WorkloadSpec, cand: Candidate, ctx: Context, peers: Sequence[Candidate]
) -> float:
    """Lower for pools where the firm already holds much (when capacity is scarce)."""
    if not ctx.scarce or not cand.accelerators:
        return 1.0
    return 1.0 - min(1.0, ctx.firm_held.get(cand.pool_id, 0) / cand.accelerators)


SCORERS: dict[str, Scorer] = {
    "price": price,
    "transfer": transfer,
    "green": green,
    "verification": verification,
    "load": load,
    "fairness": fairness,
}

# Interactive work weighs transfer (its data is near); training and batch weigh price and green
# power (they may go west).
DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    LatencyClass.INTERACTIVE: {
        "price": 0.25,
        "transfer": 0.45,
        "green": 0.05,
        "verification": 0.1,
        "load": 0.05,
        "fairness": 0.1,
    },
    LatencyClass.TRAINING: {
        "price": 0.4,
        "transfer": 0.15,
        "green": 0.2,
        "verification": 0.1,
        "load": 0.05,
        "fairness": 0.1,
    },
    LatencyClass.BATCH: {
        "price": 0.45,
        "transfer": 0.05,
        "green": 0.3,
        "verification": 0.05,
        "load": 0.05,
        "fairness": 0.1,
    },
}


def weights_for(latency_class: str) -> dict[str, float]:
    """The weights in force for a latency class (settings override the defaults per key)."""
    configured = getattr(settings, "BROKER_PLACEMENT_WEIGHTS", {}) or {}
    base = dict(DEFAULT_WEIGHTS.get(latency_class, DEFAULT_WEIGHTS[LatencyClass.TRAINING]))
    base.update(configured.get(latency_class, {}))
    return base
