"""Placement: the one place where the candidate query, filters and scorers are composed.

``place`` is deterministic for the same database state and inputs: candidates come in a fixed
SQL order, scores are compared with the pool's national id as tie-breaker, and nothing random is
involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

from django.conf import settings
from django.db import connection

from brokers.choices import RESERVING_STATUSES
from brokers.ledger import slot_bounds
from brokers.placement import catalog
from brokers.placement.candidates import fetch_candidates, prefilter_counts
from brokers.placement.filters import FILTERS, Context, Filter, needed_on
from brokers.placement.network import current_network
from brokers.placement.scorers import SCORERS, Scorer, weights_for
from brokers.placement.spec import (
    Candidate,
    OptionPart,
    PlacementOption,
    PlacementResult,
    Rejection,
    WorkloadSpec,
    check_start,
)

# A request is "scarce" when it needs more than this share of what is free among candidates.
SCARCITY_SHARE = 0.5
# A split option ranks a little below a single pool of the same quality.
SPLIT_PENALTY = 0.05


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def _firm_held(
    org_id: int | None, cands: Sequence[Candidate], spec: WorkloadSpec
) -> dict[int, int]:
    """Accelerators the firm's reserving bookings hold on each candidate pool in the window."""
    if org_id is None or not cands:
        return {}
    ids = [c.pool_id for c in cands]
    statuses = sorted(RESERVING_STATUSES)
    first, last = (
        connection.ops.adapt_datetimefield_value(x) for x in slot_bounds(spec.start, spec.end)
    )
    with connection.cursor() as cur:
        cur.execute(
            "SELECT a.pool_id, SUM(a.accelerators) FROM brokers_allocation a "
            "JOIN brokers_booking b ON b.id = a.booking_id "
            f"WHERE b.organization_id = %s AND b.status IN ({','.join(['%s'] * len(statuses))}) "
            f"AND a.pool_id IN ({','.join(['%s'] * len(ids))}) "
            'AND a.start < %s AND a."end" > %s GROUP BY a.pool_id',
            [org_id, *statuses, *ids, last, first],
        )
        return {pool_id: int(n) for pool_id, n in cur.fetchall()}


def build_context(spec: WorkloadSpec, cands: Sequence[Candidate], org_id: int | None) -> Context:
    """Network and fair-share figures for one request."""
    ctx = Context(
        network=current_network(),
        fair_share_cap=_setting("BROKER_FAIR_SHARE_CAP", 0.5),
    )
    free_units = sum(
        c.free * (1 if spec.accelerator_model else c.a100_per_accelerator) for c in cands
    )
    wanted = spec.count if spec.accelerator_model else spec.a100_equivalents
    ctx.scarce = free_units <= 0 or wanted > SCARCITY_SHARE * free_units
    if ctx.scarce:
        ctx.firm_held = _firm_held(org_id, cands, spec)
        total = sum(c.accelerators for c in cands)
        ctx.firm_share = sum(ctx.firm_held.values()) / total if total else 0.0
    return ctx


def first_rejection(
    spec: WorkloadSpec, cand: Candidate, ctx: Context, filters: Sequence[Filter] = FILTERS
) -> Rejection | None:
    for check in filters:
        rejection = check(spec, cand, ctx)
        if rejection is not None:
            return rejection
    return None


def score(
    spec: WorkloadSpec,
    cand: Candidate,
    ctx: Context,
    peers: Sequence[Candidate],
    scorers: dict[str, Scorer] = SCORERS,
) -> tuple[float, dict[str, float]]:
    """Weighted sum of the scorers (weights of the spec's latency class), and each part."""
    weights = weights_for(spec.latency_class)
    parts = {name: fn(spec, cand, ctx, peers) for name, fn in scorers.items()}
    total = sum(weights.get(name, 0.0) * value for name, value in parts.items())
    norm = sum(weights.get(name, 0.0) for name in parts) or 1.0
    return total / norm, parts


def _part(cand: Candidate, n: int) -> OptionPart:
    return OptionPart(
        pool_id=cand.pool_id,
        pool=cand.national_id,
        center=cand.center_national_id,
        hub=cand.hub,
        accelerator=cand.accelerator,
        accelerators=n,
        price_per_accelerator_hour=cand.price,
        currency=cand.currency,
    )


def _option(
    spec: WorkloadSpec,
    chosen: list[tuple[Candidate, int]],
    scores: dict[int, tuple[float, dict[str, float]]],
    ctx: Context,
) -> PlacementOption:
    hours = Decimal(str(spec.hours))
    cost = sum(((c.price or Decimal(0)) * n * hours for c, n in chosen), Decimal(0)).quantize(
        Decimal("0.01")
    )
    total_n = sum(n for _, n in chosen)
    value = sum(scores[c.pool_id][0] * n for c, n in chosen) / total_n
    if len(chosen) > 1:
        value -= SPLIT_PENALTY
    transfer_s = max(
        ctx.network.transfer_seconds(spec.data_hub, c.hub, spec.data_gb) for c, _ in chosen
    )
    green_share = sum(c.green_power_share * n for c, n in chosen) / total_n
    explanation = []
    for c, n in chosen:
        parts = scores[c.pool_id][1]
        explanation.append(
            f"{c.national_id} ({c.hub}, {c.accelerator}): {n} accelerators at "
            f"{c.price} {c.currency}/h; score {scores[c.pool_id][0]:.3f} = "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        )
    return PlacementOption(
        parts=[_part(c, n) for c, n in chosen],
        score=round(value, 6),
        cost=cost,
        currency=chosen[0][0].currency,
        transfer_seconds=round(transfer_s, 3),
        green_power_share=round(green_share, 4),
        explanation=explanation,
    )


def _split(
    spec: WorkloadSpec,
    ranked: list[Candidate],
    scores: dict[int, tuple[float, dict[str, float]]],
    ctx: Context,
) -> PlacementOption | None:
    """Greedy split over the best pools, whole gangs only, at most ``max_centers`` centers.

    With A100-equivalents the parts are weighted by each pool's measured performance.
    """
    remaining = float(spec.count or spec.a100_equivalents)
    chosen: list[tuple[Candidate, int]] = []
    centers: set[int] = set()
    for cand in ranked:
        if remaining <= 1e-9:
            break
        if cand.center_id not in centers and len(centers) >= spec.max_centers:
            continue
        per = 1.0 if spec.accelerator_model else cand.a100_per_accelerator
        if per <= 0:
            continue
        want = math.ceil(remaining / per - 1e-9)
        want = math.ceil(want / spec.gang_size) * spec.gang_size
        usable = (cand.free // spec.gang_size) * spec.gang_size
        take = min(want, usable)
        if take <= 0:
            continue
        chosen.append((cand, take))
        centers.add(cand.center_id)
        remaining -= take * per
    if remaining > 1e-9 or not chosen:
        return None
    return _option(spec, chosen, scores, ctx)


def explain_counts(spec: WorkloadSpec) -> dict[str, int]:
    """Pools of the requested model(s) left out before scoring, per reason: from the pool
    snapshot when there is one (static reasons), else from SQL (including booked-out pools)."""
    snapshot = catalog.current()
    return catalog.prefilter_counts(snapshot, spec) if snapshot else prefilter_counts(spec)


def place(
    spec: WorkloadSpec,
    *,
    organization_id: int | None = None,
    explain: bool = True,
    max_options: int = 5,
    candidate_limit: int | None = None,
) -> PlacementResult:
    """Ranked placement options for a validated spec, with every rejection explained.

    Candidates come a page of ``candidate_limit`` at a time, cheapest first; when no option
    can be built from the pools seen so far, the next page is fetched, until the candidates
    run out: "nothing fits" means that no bookable pool fits. Pools dropped by the SQL
    prefilter are counted per reason (``prefiltered``) when ``explain``; pools fetched but
    refused by a Python filter are listed one by one.

    A window that starts in the past is refused (``ValidationError``): the slots behind us are
    not capacity anyone can use, whatever their counters say.
    """
    check_start(spec.earliest_start)
    limit = candidate_limit or int(getattr(settings, "BROKER_CANDIDATE_LIMIT", 64))
    cands: list[Candidate] = []
    seen: set[int] = set()
    while True:
        page = fetch_candidates(spec, limit=limit, exclude=seen)
        cands += [c for c in page if c.pool_id not in seen]
        seen.update(c.pool_id for c in page)
        result = _rank(spec, cands, organization_id, max_options)
        if result.options or not page:
            break
    if explain:
        result.prefiltered = explain_counts(spec)
    return result


def _rank(
    spec: WorkloadSpec,
    cands: list[Candidate],
    organization_id: int | None,
    max_options: int,
) -> PlacementResult:
    """Filters, scores and options over the candidates fetched so far."""
    ctx = build_context(spec, cands, organization_id)
    rejections: list[Rejection] = []
    survivors: list[Candidate] = []
    for cand in cands:
        rejection = first_rejection(spec, cand, ctx)
        if rejection is None:
            survivors.append(cand)
        else:
            rejections.append(rejection)
    scores = {c.pool_id: score(spec, c, ctx, survivors) for c in survivors}
    ranked = sorted(survivors, key=lambda c: (-scores[c.pool_id][0], c.national_id))
    options: list[PlacementOption] = []
    for cand in ranked:
        need = needed_on(spec, cand)
        if cand.free < need:
            if not spec.allow_split:
                rejections.append(
                    Rejection(cand.national_id, "capacity.insufficient", f"{cand.free} free")
                )
            continue
        if len(options) < max_options:
            options.append(_option(spec, [(cand, need)], scores, ctx))
    if spec.allow_split and spec.max_centers > 1:
        split = _split(spec, ranked, scores, ctx)
        if split is not None and len(split.parts) > 1:
            options.append(split)
    options.sort(key=lambda o: (-o.score, [p.pool for p in o.parts]))
    if options:
        best = options[0]
        runner_up = (
            f"; next best scores {options[1].score:.3f}"
            if len(options) > 1
            else "; no other option"
        )
        best.explanation.insert(0, f"chosen: highest score {best.score:.3f}{runner_up}")
    return PlacementResult(
        spec=spec,
        options=options[:max_options],
        rejections=rejections,
        candidates_considered=len(cands),
    )
