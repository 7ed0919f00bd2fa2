"""The candidate query: one indexed SQL statement that prefilters pools and computes their free
capacity over the window from ``PoolSlot`` (the most reserved slot of the window).

Every filter that depends only on a pool's static facts narrows the candidates here (status,
model, hubs, centers, price, traits, memory, node shape, interconnect, the hubs within reach of
interactive work: :func:`static_conditions`), and so does free capacity: proposing pools that a
filter is bound to reject would crowd out those that fit. The Python filters check all of it
again and explain each rejection. Pools left out by SQL are counted per reason by
:func:`prefilter_counts` when the caller asks for explanations.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection

from brokers.choices import BookingClassSlug
from brokers.ledger import USED_SQL, slot_bounds, used_expression
from brokers.placement import catalog
from brokers.placement.filters import hubs_within_reach
from brokers.placement.network import current_network
from brokers.placement.spec import Candidate, WorkloadSpec, spot_cap_threshold
from registry.models import A100_BF16_DENSE_TFLOPS
from registry.queries import (
    ACCELERATOR_TABLE,
    BOOKABLE_SQL,
    LISTED_SQL,
    POOL_FROM_SQL,
    POOL_TRAITS_TABLE,
    TRAIT_TABLE,
    tflops_sql,
)

TFLOPS_SQL = tflops_sql()
# With fewer candidates than this among the cheapest pools, every pool is examined.
MIN_CANDIDATES = 8
FROM_SQL = POOL_FROM_SQL


def aware_utc(value: object) -> dt.datetime | None:
    """A timestamp read by raw SQL as an aware UTC datetime: SQLite (``make run``) gives text
    or a naive datetime in UTC, PostgreSQL an aware one."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _in(values: Collection[Any]) -> str:
    return ",".join(["%s"] * len(values))


def min_part(spec: WorkloadSpec) -> tuple[str, list[Any]]:
    """SQL condition on ``free`` (the free accelerators) that a usable pool must meet."""
    if spec.accelerator_model:
        need = spec.gang_size if spec.allow_split else spec.count
        return "free >= %s", [need]
    if spec.allow_split:
        return "free >= %s", [spec.gang_size]
    # Any model: free * tflops must reach the requested A100-equivalents.
    return "free * tflops >= %s", [spec.a100_equivalents * A100_BF16_DENSE_TFLOPS]


def static_part(spec: WorkloadSpec) -> tuple[str, list[Any]]:
    """The same condition on the pool's size instead of its free capacity: no slot probe, so
    pools that could never fit are skipped before free capacity is computed."""
    cond, params = min_part(spec)
    return cond.replace("free", "p.accelerators").replace("tflops", TFLOPS_SQL), params


def model_ids(slug: str = "") -> list[int]:
    """Accelerator ids of the catalog (of one slug if given): the candidate query filters on the
    indexed column directly. Read every time: the catalog table is tiny and a cached id could
    outlive its row."""
    with connection.cursor() as cur:
        if slug:
            cur.execute(f"SELECT id FROM {ACCELERATOR_TABLE} WHERE slug = %s", [slug])
        else:
            cur.execute(f"SELECT id FROM {ACCELERATOR_TABLE} ORDER BY id")
        return [row[0] for row in cur.fetchall()]


# The spot price times 100, unrounded: exact in SQL (a product of numerics, no division).
SPOT_PRODUCT_SQL = "(p.price_per_accelerator_hour * (100 - p.spot_discount_percent))"
TRAIT_SQL = (
    f"EXISTS (SELECT 1 FROM {POOL_TRAITS_TABLE} pt JOIN {TRAIT_TABLE} t "
    "ON t.id = pt.trait_id WHERE pt.pool_id = p.id AND t.slug = %s)"
)


def _contains(haystack: str) -> str:
    """SQL: ``haystack`` contains the parameter (a plain substring, like Python's ``in``)."""
    if connection.vendor == "postgresql":
        return f"strpos({haystack}, %s) > 0"
    return f"instr({haystack}, %s) > 0"


def cap_condition(spec: WorkloadSpec, cap: Decimal) -> tuple[str, list[Any]]:
    """SQL: the price the spec's class pays is known and within ``cap`` (the filter
    ``price_within_cap``). Spot pays the spot price, compared exactly as :func:`spot_price`
    rounds it (:func:`spot_cap_threshold`); the other classes the pool's price."""
    if spec.booking_class == BookingClassSlug.SPOT:
        op, bound = spot_cap_threshold(cap)
        return (
            f"(p.price_per_accelerator_hour IS NOT NULL AND {SPOT_PRODUCT_SQL} {op} %s)",
            [bound],
        )
    return (
        "(p.price_per_accelerator_hour IS NOT NULL AND p.price_per_accelerator_hour <= %s)",
        [cap],
    )


def order_sql(spec: WorkloadSpec) -> str:
    """SQL: the price candidates are walked by, the one the spec's class pays (the spot price
    times 100 for spot: same order; the index serves only the pool's price)."""
    if spec.booking_class == BookingClassSlug.SPOT:
        return SPOT_PRODUCT_SQL
    return "p.price_per_accelerator_hour"


def static_conditions(spec: WorkloadSpec) -> list[tuple[str, str, list[Any]]]:
    """``(reason_code, SQL condition, params)`` for every static filter the spec sets, in the
    order of :data:`brokers.placement.filters.FILTERS`: a pool passes the filter exactly when
    the condition is true (never NULL), so the candidate query can narrow on all of them and
    :func:`prefilter_counts` can name the first one a pool fails."""
    out: list[tuple[str, str, list[Any]]] = []
    if spec.hubs_allowed:
        out.append(
            ("hub.not_allowed", f"h.code IN ({_in(spec.hubs_allowed)})", list(spec.hubs_allowed))
        )
    if spec.hubs_excluded:
        out.append(
            ("hub.excluded", f"h.code NOT IN ({_in(spec.hubs_excluded)})", list(spec.hubs_excluded))
        )
    if spec.centers_excluded:
        out.append(
            (
                "center.excluded",
                f"c.national_id NOT IN ({_in(spec.centers_excluded)})",
                list(spec.centers_excluded),
            )
        )
    if spec.price_cap is not None:
        out.append(("price.over_cap", *cap_condition(spec, spec.price_cap)))
    if spec.traits:
        out.append(
            (
                "traits.missing",
                "(" + " AND ".join([TRAIT_SQL] * len(spec.traits)) + ")",
                list(spec.traits),
            )
        )
    if spec.memory_gb_per_accelerator:
        out.append(
            (
                "memory.insufficient",
                "COALESCE(a.memory_gb, 0) >= %s",
                [spec.memory_gb_per_accelerator],
            )
        )
    if spec.min_accelerators_per_node:
        out.append(
            ("node.too_small", "p.accelerators_per_node >= %s", [spec.min_accelerators_per_node])
        )
    wanted = spec.interconnect.lower()
    if wanted:
        fabrics = (
            "LOWER(COALESCE(p.intra_node_interconnect, '') || ' ' || "
            "COALESCE(p.inter_node_interconnect, ''))"
        )
        out.append(
            (
                "interconnect.mismatch",
                f"({_contains(fabrics)} OR {TRAIT_SQL})",
                [wanted, wanted],
            )
        )
    near = hubs_within_reach(spec, current_network())
    if near is not None:
        hubs = sorted(near)
        out.append(("latency.too_far", f"h.code IN ({_in(hubs)})", hubs))
    return out


def _filters(spec: WorkloadSpec, exclude: Collection[int] = ()) -> tuple[list[str], list[Any]]:
    """Conditions shared by every model's branch (the model itself is per branch): bookable,
    every static filter of the spec, and not among the pools already proposed (``exclude``)."""
    where = [BOOKABLE_SQL]
    params: list[Any] = []
    for _, cond, cond_params in static_conditions(spec):
        where.append(cond)
        params += cond_params
    if exclude:
        if connection.vendor == "postgresql":
            # One array parameter, however many pools were seen.
            where.append("NOT (p.id = ANY(%s))")
            params.append(sorted(exclude))
        else:
            where.append(f"p.id NOT IN ({_in(list(exclude))})")
            params += sorted(exclude)
    return where, params


def fetch_candidates(
    spec: WorkloadSpec, *, limit: int, exclude: Collection[int] = ()
) -> list[Candidate]:
    """Pools that pass the prefilter (bookable, every static filter of the spec, room for the
    workload in the window), cheapest first, at most ``limit``; pools in ``exclude`` (an
    earlier page) are skipped, so a caller pages on until the list comes back empty.

    One statement: a ``UNION ALL`` of one branch per accelerator model (one branch when the spec
    names a model). Each branch walks ``pool_bookable_price_idx`` (model, price, id over active
    pools) in price order and stops after ``limit`` rows that fit, so the cost follows the
    limit, not the number of pools; free capacity is an index probe on the pool's slots.
    """
    first, last = (
        connection.ops.adapt_datetimefield_value(x) for x in slot_bounds(spec.start, spec.end)
    )
    snapshot = catalog.current()
    if snapshot is not None:
        models_seen = 1 if spec.accelerator_model else max(1, len(snapshot.models))
        scan = limit * 2 if models_seen == 1 else max(16, limit * 3 // models_seen)
        found = catalog.candidates_from(
            snapshot, spec, limit=limit, per_model_scan=scan, exclude=exclude
        )
        if found is not None:
            return found
    models = model_ids(spec.accelerator_model)
    if not models:
        return []
    where, params = _filters(spec, exclude)
    cond, cond_params = min_part(spec)
    cond = cond.replace("free", "f.free").replace("tflops", "f.tflops")
    cap, cap_params = static_part(spec)
    per_model = limit if len(models) == 1 else max(8, limit // len(models) * 2)
    used = used_expression(USED_SQL.replace("p.id", "b.pool_id"))
    order = order_sql(spec)

    def statement(bound: int | None) -> tuple[str, list[Any]]:
        # Innermost: the cheapest pools of one model that pass the cheap filters, walked in
        # pool_bookable_price_idx order and cut at ``bound``; then free capacity (one slot
        # probe each); then the free-capacity condition, cheapest first.
        branch = (
            "SELECT * FROM (SELECT f.pool_id, f.national_id, f.center_id, f.center_nid, "
            "f.operator_id, f.hub, f.accelerator, f.accelerators, f.accelerators_per_node, "
            "f.free, f.price, f.currency, f.tflops, f.memory_gb, f.intra_node_interconnect, "
            "f.inter_node_interconnect, f.green_power_share, f.verified_at, "
            "f.spot_discount_percent, f.class_price FROM ("
            f"SELECT b.*, b.accelerators - COALESCE({used}, 0) AS free FROM ("
            "SELECT p.id AS pool_id, p.national_id, c.id AS center_id, "
            "c.national_id AS center_nid, c.operator_id, h.code AS hub, a.slug AS accelerator, "
            "p.accelerators, p.accelerators_per_node, "
            "p.price_per_accelerator_hour AS price, p.currency, "
            f"{TFLOPS_SQL} AS tflops, a.memory_gb, p.intra_node_interconnect, "
            "p.inter_node_interconnect, c.green_power_share, p.verified_at, "
            f"p.spot_discount_percent, {order} AS class_price "
            f"{FROM_SQL} WHERE p.accelerator_id = %s AND {' AND '.join(where)} "
            f"AND {TFLOPS_SQL} > 0 AND {cap} "
            f"ORDER BY {order}, p.id"
            + (" LIMIT %s" if bound else "")
            + f") AS b) AS f WHERE {cond} ORDER BY f.class_price, f.pool_id LIMIT %s) AS m{{i}}"
        )
        sql = " UNION ALL ".join(branch.replace("{i}", str(i)) for i in range(len(models)))
        all_params: list[Any] = []
        for model in models:
            all_params += [first, last, model, *params, *cap_params]
            all_params += [bound] if bound else []
            all_params += [*cond_params, per_model]
        return sql, all_params

    bound = int(getattr(settings, "BROKER_CANDIDATE_SCAN", 512))
    with connection.cursor() as cur:
        cur.execute(*statement(bound))
        rows = cur.fetchall()
        if len(rows) < MIN_CANDIDATES:
            # Few fit among the cheapest: look at every pool before saying "nothing fits".
            cur.execute(*statement(None))
            rows = cur.fetchall()
        traits: dict[int, set[str]] = defaultdict(set)
        if rows and (spec.traits or spec.interconnect):
            pool_ids = [row[0] for row in rows]
            if pool_ids:
                cur.execute(
                    f"SELECT pt.pool_id, t.slug FROM {POOL_TRAITS_TABLE} pt JOIN {TRAIT_TABLE} t "
                    f"ON t.id = pt.trait_id WHERE pt.pool_id IN ({_in(pool_ids)})",
                    pool_ids,
                )
                for pool_id, slug in cur.fetchall():
                    traits[pool_id].add(slug)
    out = []
    for row in rows:
        verified_at = aware_utc(row[17])
        out.append(
            Candidate(
                pool_id=row[0],
                national_id=row[1],
                center_id=row[2],
                center_national_id=row[3],
                operator_id=row[4],
                hub=row[5],
                accelerator=row[6],
                accelerators=row[7],
                accelerators_per_node=row[8],
                free=max(0, int(row[9])),
                price=None if row[10] is None else Decimal(str(row[10])),
                currency=row[11] or "",
                tflops=float(row[12] or 0),
                memory_gb=row[13],
                intra_node_interconnect=row[14] or "",
                inter_node_interconnect=row[15] or "",
                green_power_share=float(row[16]),
                verified_at=verified_at,
                traits=frozenset(traits.get(row[0], ())),
                spot_discount_percent=Decimal(str(row[18] or 0)),
            )
        )
    # One deterministic order whatever the branches returned: cheapest per unit of work.
    out.sort(key=lambda c: (c.price is None, _unit(spec, c), c.pool_id))
    return out[:limit]


def _unit(spec: WorkloadSpec, cand: Candidate) -> Decimal:
    """The price per unit of work the spec's class pays (the candidates' order)."""
    paid = cand.price_for(spec.booking_class)
    if paid is None:
        return Decimal(0)
    if spec.accelerator_model or not cand.tflops:
        return paid
    return paid / Decimal(str(cand.tflops))


def prefilter_counts(spec: WorkloadSpec) -> dict[str, int]:
    """How many listed pools of the requested model (of any model when the spec asks for
    A100-equivalents) the SQL prefilter left out, per reason (the first reason that applies).

    A pass over those pools: asked for only when the caller wants explanations.
    """
    first, last = (
        connection.ops.adapt_datetimefield_value(x) for x in slot_bounds(spec.start, spec.end)
    )
    cases: list[str] = [f"WHEN NOT ({BOOKABLE_SQL}) THEN 'pool.not_active'"]
    params: list[Any] = []
    scope = LISTED_SQL
    scope_params: list[Any] = []
    if spec.accelerator_model:
        # Only pools of the requested model are explained: the index keeps this cheap, and
        # "it is another model" explains nothing.
        scope += " AND p.accelerator_id = %s"
        scope_params.append((model_ids(spec.accelerator_model) or [0])[0])
    for reason, cond, cond_params in static_conditions(spec):
        cases.append(f"WHEN NOT ({cond}) THEN '{reason}'")
        params += cond_params
    cases.append(f"WHEN {TFLOPS_SQL} <= 0 THEN 'performance.unknown'")
    cond, cond_params = min_part(spec)
    cond = cond.replace("free", f"(p.accelerators - COALESCE({USED_SQL}, 0))").replace(
        "tflops", TFLOPS_SQL
    )
    n_used = cond.count(USED_SQL)
    cases.append(f"WHEN NOT ({cond}) THEN 'capacity.insufficient'")
    sql = (
        f"SELECT reason, COUNT(*) FROM (SELECT CASE {' '.join(cases)} ELSE NULL END AS reason "
        f"{FROM_SQL} WHERE {scope}) q "
        "WHERE reason IS NOT NULL GROUP BY reason"
    )
    # The capacity condition embeds USED_SQL, whose window parameters come first in it.
    cond_all: list[Any] = []
    for _ in range(n_used):
        cond_all += [first, last]
    with connection.cursor() as cur:
        cur.execute(sql, [*params, *cond_all, *cond_params, *scope_params])
        return {reason: int(n) for reason, n in cur.fetchall()}
