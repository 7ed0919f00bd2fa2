"""Placement filters: each says whether one pool can take the workload, and if not, why.

A filter is ``(spec, candidate, context) -> Rejection | None``; they are small so each can be
tested alone, and composed in one list (:data:`FILTERS`) that :mod:`brokers.placement.engine`
runs in order (the first rejection is reported).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from brokers.choices import BookingClassSlug, LatencyClass
from brokers.placement.network import Network
from brokers.placement.spec import Candidate, Rejection, WorkloadSpec

# Interactive work must stay this close (round trip to its data) or in the data's own hub.
INTERACTIVE_MAX_RTT_MS = 15.0


@dataclass
class Context:
    """What filters and scorers share for one request: the network, and fair-share figures."""

    network: Network
    # Scarce: the request would take a large part of what is free for its model(s).
    scarce: bool = False
    # The requesting firm's share of the candidates' capacity it already holds in the window.
    firm_share: float = 0.0
    fair_share_cap: float = 0.5
    # Accelerators the firm already holds on each pool in the window (scored as a penalty).
    firm_held: dict[int, int] = field(default_factory=dict)
    # Figures scorers compute once per request over all peers (e.g. the cheapest unit price).
    cache: dict[str, Any] = field(default_factory=dict)


Filter = Callable[[WorkloadSpec, Candidate, Context], Rejection | None]


def needed_on(spec: WorkloadSpec, cand: Candidate) -> int:
    """Accelerators of this pool the whole workload needs: the count, or the A100-equivalents
    converted by the pool's measured (else datasheet) performance, rounded up to whole gangs."""
    if spec.accelerator_model:
        return spec.count
    per = cand.a100_per_accelerator
    if per <= 0:
        return 0
    n = math.ceil(spec.a100_equivalents / per - 1e-9)
    return math.ceil(n / spec.gang_size) * spec.gang_size


def model_matches(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if spec.accelerator_model and cand.accelerator != spec.accelerator_model:
        return Rejection(
            cand.national_id, "model.mismatch", f"{cand.accelerator}, not {spec.accelerator_model}"
        )
    return None


def hub_allowed(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if spec.hubs_allowed and cand.hub not in spec.hubs_allowed:
        return Rejection(cand.national_id, "hub.not_allowed", f"hub {cand.hub} is not allowed")
    if cand.hub in spec.hubs_excluded:
        return Rejection(cand.national_id, "hub.excluded", f"hub {cand.hub} is excluded")
    return None


def center_allowed(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if cand.center_national_id in spec.centers_excluded:
        return Rejection(
            cand.national_id, "center.excluded", f"center {cand.center_national_id} is excluded"
        )
    return None


def price_within_cap(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    """The cap applies to the price the booking's class pays: a spot booking's is the pool's
    spot price (:func:`brokers.placement.spec.spot_price`), the other classes' the pool's price."""
    if spec.price_cap is None:
        return None
    price = cand.price_for(spec.booking_class)
    if price is None:
        return Rejection(
            cand.national_id, "price.over_cap", f"no price, and the cap is {spec.price_cap}"
        )
    if price > spec.price_cap:
        what = (
            f"spot price {price} {cand.currency}/accelerator-hour "
            f"({cand.price} less {cand.spot_discount_percent}%)"
            if spec.booking_class == BookingClassSlug.SPOT
            else f"{price} {cand.currency}/accelerator-hour"
        )
        return Rejection(
            cand.national_id, "price.over_cap", f"{what} is over the cap {spec.price_cap}"
        )
    return None


def memory_enough(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if spec.memory_gb_per_accelerator and (cand.memory_gb or 0) < spec.memory_gb_per_accelerator:
        return Rejection(
            cand.national_id,
            "memory.insufficient",
            f"{cand.memory_gb or 'unknown'} GB per accelerator, "
            f"{spec.memory_gb_per_accelerator} GB needed",
        )
    return None


def node_shape(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if cand.accelerators_per_node < spec.min_accelerators_per_node:
        return Rejection(
            cand.national_id,
            "node.too_small",
            f"{cand.accelerators_per_node} accelerators per node, "
            f"{spec.min_accelerators_per_node} needed",
        )
    return None


def interconnect_matches(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    wanted = spec.interconnect.lower()
    if not wanted:
        return None
    fabrics = f"{cand.intra_node_interconnect} {cand.inter_node_interconnect}".lower()
    if wanted in fabrics or wanted in cand.traits:
        return None
    return Rejection(
        cand.national_id,
        "interconnect.mismatch",
        f"{fabrics.strip() or 'no declared fabric'}, {spec.interconnect} needed",
    )


def traits_present(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    missing = sorted(set(spec.traits) - cand.traits)
    if missing:
        return Rejection(cand.national_id, "traits.missing", f"lacks {', '.join(missing)}")
    return None


def capacity_free(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    need = spec.gang_size if spec.allow_split else needed_on(spec, cand)
    if need <= 0:
        return Rejection(cand.national_id, "performance.unknown", "no measured or rated TFLOPS")
    if cand.free < need:
        return Rejection(
            cand.national_id,
            "capacity.insufficient",
            f"{cand.free} of {cand.accelerators} accelerators free in the window, {need} needed",
        )
    return None


def latency_class_fits(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    if not needs_network(spec):
        return None
    rtt = ctx.network.latency_ms(spec.data_hub, cand.hub)
    if cand.hub != spec.data_hub and rtt > INTERACTIVE_MAX_RTT_MS:
        return Rejection(
            cand.national_id,
            "latency.too_far",
            f"{rtt:.0f} ms from the data in {spec.data_hub}; interactive work needs "
            f"{INTERACTIVE_MAX_RTT_MS:.0f} ms or less",
        )
    return None


def fair_share(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    """When capacity is scarce, a firm already above its fair share waits for others."""
    if ctx.scarce and ctx.firm_share >= ctx.fair_share_cap:
        return Rejection(
            cand.national_id,
            "fair_share.exceeded",
            f"capacity is scarce and the firm already holds {ctx.firm_share:.0%} of it "
            f"(fair-share cap {ctx.fair_share_cap:.0%})",
        )
    return None


def needs_network(spec: WorkloadSpec) -> bool:
    """Whether :func:`latency_class_fits` asks the network anything for this spec."""
    return spec.latency_class == LatencyClass.INTERACTIVE and bool(spec.data_hub)


def hubs_within_reach(spec: WorkloadSpec, network: Network) -> frozenset[str] | None:
    """The hubs :func:`latency_class_fits` accepts, for the candidate query; None when the
    latency class sets no bound (anything but interactive work with a data hub)."""
    if not needs_network(spec):
        return None
    near = {
        h for h in network.hubs if network.latency_ms(spec.data_hub, h) <= INTERACTIVE_MAX_RTT_MS
    }
    return frozenset({spec.data_hub} | near)


# The one place filters are composed; order decides which reason a pool is reported under.
FILTERS: list[Filter] = [
    model_matches,
    hub_allowed,
    center_allowed,
    price_within_cap,
    traits_present,
    memory_enough,
    node_shape,
    interconnect_matches,
    latency_class_fits,
    capacity_free,
    fair_share,
]

# The filters that depend only on a pool's static facts (not on its free capacity nor on what the
# firm holds): the candidate step applies each of them before fetching (in SQL, or walking the
# pool snapshot), so the pools it proposes fail only on capacity or fair share.
STATIC_FILTERS: list[Filter] = [
    model_matches,
    hub_allowed,
    center_allowed,
    price_within_cap,
    traits_present,
    memory_enough,
    node_shape,
    interconnect_matches,
    latency_class_fits,
]


def static_rejection(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> Rejection | None:
    """The first static filter (:data:`STATIC_FILTERS`, in :data:`FILTERS` order) that refuses
    the pool, or None: the pool could take the workload if it had the room."""
    for check in STATIC_FILTERS:
        rejection = check(spec, cand, ctx)
        if rejection is not None:
            return rejection
    return None


def option_rejections(
    spec: WorkloadSpec, parts: Sequence[tuple[Candidate, int]], ctx: Context
) -> list[Rejection]:
    """Why placement would never propose a client's chosen option (``parts``: each pool with
    its accelerators, the pool's price the one the booking pays), or ``[]``.

    Each part's pool must pass every static filter, the very functions placement runs on its
    candidates (:func:`static_rejection`: model, hubs, centers, the price cap on the price of
    the spec's class, traits, memory, node shape, interconnect, latency class); each part must
    be whole gangs on a pool with known performance; more than one pool needs ``allow_split``,
    and the pools' centers number at most ``max_centers``; A100-equivalents must be covered.
    Free capacity and fair share are not judged here: the ledger checks capacity under lock.
    Rejections with an empty ``pool`` are about the option as a whole."""
    out: list[Rejection] = []
    seen: set[int] = set()
    for cand, _ in parts:
        if cand.pool_id in seen:
            continue
        seen.add(cand.pool_id)
        rejection = static_rejection(spec, cand, ctx)
        if rejection is None and not spec.accelerator_model and cand.a100_per_accelerator <= 0:
            rejection = Rejection(
                cand.national_id, "performance.unknown", "no measured or rated TFLOPS"
            )
        if rejection is not None:
            out.append(rejection)
    for cand, n in parts:
        if n % spec.gang_size:
            out.append(
                Rejection(
                    cand.national_id,
                    "gang.split",
                    f"{n} accelerators are not whole gangs of {spec.gang_size}",
                )
            )
    if len(seen) > 1 and not spec.allow_split:
        out.append(
            Rejection(
                "",
                "split.not_allowed",
                f"the option spans {len(seen)} pools and the specification does not allow "
                "a split (allow_split)",
            )
        )
    centers = {cand.center_id for cand, _ in parts}
    if len(centers) > spec.max_centers and spec.allow_split:
        out.append(
            Rejection(
                "",
                "split.too_many_centers",
                f"the option spans {len(centers)} centers, at most {spec.max_centers} "
                "allowed (max_centers)",
            )
        )
    if not spec.accelerator_model and not out:
        covered = sum(cand.a100_per_accelerator * n for cand, n in parts)
        if covered < spec.a100_equivalents - 1e-9:
            out.append(
                Rejection(
                    "",
                    "capacity.insufficient",
                    f"the parts add up to {covered:.2f} A100-equivalents, "
                    f"{spec.a100_equivalents:g} requested",
                )
            )
    return out
