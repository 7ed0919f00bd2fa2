"""A per-process snapshot of the bookable pools' static facts, for fast candidate selection.

This is the scheduler cache of RELIABILITY 1.2, used the way that section allows: it only
*proposes* candidates. What may be stale here (price, hub, size, traits, for at most
``BROKER_PLACEMENT_CACHE_SECONDS``) never decides a booking: status and free capacity of every
proposed pool are read fresh from the database, and the ledger checks both again under lock when
booking. A pool inserted or changed by any writer reaches the snapshot within moments: the
database notifies the changed ids (``brokers.notify``) and a refresher thread patches the
snapshot (:func:`changed`); the refresh period is a safety net.

Pools are kept per model and per (model, hub), sorted by price, so a request walks the cheapest
pools that can fit and stops: its cost follows the number of candidates, not the number of
pools. One thread refreshes while the others keep using the previous snapshot.
"""

from __future__ import annotations

import bisect
import datetime as dt
import gc
import heapq
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection

from brokers.choices import BookingClassSlug
from brokers.ledger import USED_SQL, slot_bounds, used_expression
from brokers.placement import filters
from brokers.placement.candidates import aware_utc
from brokers.placement.filters import Context, hubs_within_reach
from brokers.placement.network import current_network
from brokers.placement.spec import Candidate, WorkloadSpec, spot_price
from registry.models.catalog import A100_BF16_DENSE_TFLOPS
from registry.queries import (
    BOOKABLE_SQL,
    CENTER_TABLE,
    LISTED_SQL,
    POOL_FROM_SQL,
    POOL_TABLE,
    POOL_TRAITS_TABLE,
    TRAIT_TABLE,
    tflops_sql,
)

logger = logging.getLogger(__name__)

# A pool's static facts, in any state (``_candidates`` reads them).
FACTS_SQL = (
    "SELECT p.id, p.national_id, c.id, c.national_id, c.operator_id, h.code, a.slug, "
    "p.accelerators, p.accelerators_per_node, p.price_per_accelerator_hour, p.currency, "
    f"{tflops_sql()}, a.memory_gb, p.intra_node_interconnect, "
    "p.inter_node_interconnect, c.green_power_share, p.verified_at, cl.code, "
    "p.spot_discount_percent "
    f"{POOL_FROM_SQL}"
)
SNAPSHOT_SQL = f"{FACTS_SQL} WHERE {BOOKABLE_SQL}"


# Batches of candidates checked against the database before giving the question to SQL.
MAX_BATCHES = 4
# Fewer candidates than this that fit: keep walking (or ask the database about every pool).
MIN_CANDIDATES = 8


def _key(c: Candidate) -> tuple[bool, Decimal, int]:
    return (c.price is None, c.price or Decimal(0), c.pool_id)


def size_class(accelerators: int) -> tuple[int, int]:
    """Pools are grouped by size class (the two leading bits of their accelerator count: 8, 12,
    16, 24, 32, 48...), so a request for many accelerators never walks the small pools and
    walks at most one class of pools that may be a little too small."""
    n = max(1, int(accelerators))
    bits = n.bit_length()
    return (bits, (n >> (bits - 2)) & 1 if bits >= 2 else 0)


class PoolCatalog:
    """Active pools in active centers, as candidates with ``free`` unknown (set to size).

    Lists sorted by price, keyed by (model, hub, size class): a walk merges the few lists that
    can hold the request.
    """

    def __init__(
        self, pools: list[Candidate], loaded_at: float, clusters: dict[int, str] | None = None
    ) -> None:
        self.loaded_at = loaded_at
        self.pools = pools
        self.size = len(pools)
        self.clusters = clusters or {}
        # By national id, whole and per model and per hub: capacity listings page through these.
        self.by_nid: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
        for pool in pools:
            for key in (
                ("", ""),
                (pool.accelerator, ""),
                ("", pool.hub),
                (pool.accelerator, pool.hub),
            ):
                self.by_nid[key].append(pool)
        for group in self.by_nid.values():
            group.sort(key=lambda p: p.national_id)
        self.nid_keys = {key: [p.national_id for p in group] for key, group in self.by_nid.items()}
        # A client's chosen option names its pools (``services.option_from_parts``).
        self.by_national_id = {pool.national_id: pool for pool in pools}
        # Listed pools that are not bookable (degraded, offline, or in such a center), per model.
        self.inactive: dict[str, int] = {}
        groups: dict[tuple[str, str, tuple[int, int]], list[Candidate]] = defaultdict(list)
        hubs: dict[str, set[str]] = defaultdict(set)
        classes: dict[str, set[tuple[int, int]]] = defaultdict(set)
        max_tflops: dict[str, float] = defaultdict(float)
        max_discount: dict[str, Decimal] = defaultdict(Decimal)
        for pool in pools:
            k = size_class(pool.accelerators)
            groups[(pool.accelerator, pool.hub, k)].append(pool)
            hubs[pool.accelerator].add(pool.hub)
            classes[pool.accelerator].add(k)
            max_tflops[pool.accelerator] = max(max_tflops[pool.accelerator], pool.tflops)
            max_discount[pool.accelerator] = max(
                max_discount[pool.accelerator], pool.spot_discount_percent
            )
        for group in groups.values():
            group.sort(key=_key)
        self.groups = dict(groups)
        self.models = sorted(hubs)
        self.hubs = {m: sorted(h) for m, h in hubs.items()}
        self.classes = {m: sorted(k) for m, k in classes.items()}
        self.max_tflops = dict(max_tflops)
        # The largest spot discount per model: a walk by price bounds the spot prices ahead.
        self.max_discount = dict(max_discount)

    def walk(self, model: str, hubs: tuple[str, ...], min_accelerators: int) -> Iterator[Candidate]:
        """Pools of ``model`` (in ``hubs`` if given) with room for ``min_accelerators`` by size
        class, cheapest first."""
        least = size_class(max(1, min_accelerators))
        lists = [
            self.groups[(model, hub, k)]
            for hub in (hubs or self.hubs.get(model, ()))
            for k in self.classes.get(model, ())
            if k >= least and (model, hub, k) in self.groups
        ]
        if len(lists) == 1:
            return iter(lists[0])
        return heapq.merge(*lists, key=_key)


def _candidates(
    where: str = "",
    params: Sequence[Any] = (),
    *,
    tail: str = "",
    base: str = SNAPSHOT_SQL,
    with_traits: bool = True,
) -> tuple[list[Candidate], dict[int, str]]:
    """Active pools in active centers (``where`` narrows them further, ``tail`` orders and
    limits them) as candidates, in the order read, and each one's cluster code; with ``base``
    another statement of the same columns whose ``WHERE`` ``where`` continues; without
    ``with_traits`` the candidates' traits are left empty (one query less)."""
    with connection.cursor() as cur:
        cur.execute(base + where + tail, list(params))
        rows = cur.fetchall()
        ids = [r[0] for r in rows]
        traits: dict[int, set[str]] = defaultdict(set)
        if ids and with_traits:
            read = (
                f"SELECT pt.pool_id, t.slug FROM {POOL_TRAITS_TABLE} pt "
                f"JOIN {TRAIT_TABLE} t ON t.id = pt.trait_id"
            )
            if not where:
                cur.execute(read)  # the whole snapshot: every pool's traits
            elif connection.vendor == "postgresql":
                cur.execute(read + " WHERE pt.pool_id = ANY(%s)", [ids])
            else:
                cur.execute(read + f" WHERE pt.pool_id IN ({','.join(['%s'] * len(ids))})", ids)
            for pool_id, slug in cur.fetchall():
                traits[pool_id].add(slug)
    pools = []
    clusters: dict[int, str] = {}
    for r in rows:
        clusters[r[0]] = r[17]
        verified_at = aware_utc(r[16])
        pools.append(
            Candidate(
                pool_id=r[0],
                national_id=r[1],
                center_id=r[2],
                center_national_id=r[3],
                operator_id=r[4],
                hub=r[5],
                accelerator=r[6],
                accelerators=r[7],
                accelerators_per_node=r[8],
                free=r[7],
                price=None if r[9] is None else Decimal(str(r[9])),
                currency=r[10] or "",
                tflops=float(r[11] or 0),
                memory_gb=r[12],
                intra_node_interconnect=r[13] or "",
                inter_node_interconnect=r[14] or "",
                green_power_share=float(r[15]),
                verified_at=verified_at,
                traits=frozenset(traits.get(r[0], ())),
                spot_discount_percent=Decimal(str(r[18] or 0)),
            )
        )
    return pools, clusters


def pool_facts(
    pool_ids_sql: str, params: Sequence[Any] = (), *, with_traits: bool = True
) -> list[Candidate]:
    """The static facts (the snapshot's, read now) of the pools whose ids ``pool_ids_sql``
    selects, in any state: a client's chosen option may name a pool the snapshot does not hold
    (``services.option_from_parts``), and placement's filters judge it on the same facts.
    ``with_traits=False`` when no filter will look at them (no traits nor interconnect asked)."""
    where = f" AND p.id IN ({pool_ids_sql})"
    pools, _ = _candidates(where, params, base=f"{FACTS_SQL} WHERE 1 = 1", with_traits=with_traits)
    return pools


def _finish(snapshot: PoolCatalog) -> PoolCatalog:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT a.slug, COUNT(*) {POOL_FROM_SQL} "
            f"WHERE {LISTED_SQL} AND NOT ({BOOKABLE_SQL}) GROUP BY a.slug"
        )
        snapshot.inactive = dict(cur.fetchall())
    # Hundreds of thousands of long-lived objects: keep them out of the cyclic collector's
    # full passes, which would otherwise pause a request now and then for 100+ ms.
    gc.freeze()
    return snapshot


def load() -> PoolCatalog:
    pools, clusters = _candidates()
    return _finish(PoolCatalog(pools, time.monotonic(), clusters))


def patched(
    snapshot: PoolCatalog, pool_ids: Collection[int], center_ids: Collection[int]
) -> PoolCatalog:
    """``snapshot`` with the given pools and the pools of the given centers read again (a pool
    no longer bookable drops out); the others are kept as they are."""
    pool_ids, center_ids = set(pool_ids), set(center_ids)
    fresh, clusters = _candidates(
        " AND (p.id = ANY(%s) OR p.center_id = ANY(%s))", [sorted(pool_ids), sorted(center_ids)]
    )
    kept = [
        c for c in snapshot.pools if c.pool_id not in pool_ids and c.center_id not in center_ids
    ]
    merged = {c.pool_id: snapshot.clusters.get(c.pool_id, "") for c in kept}
    merged.update(clusters)
    return _finish(PoolCatalog(kept + fresh, time.monotonic(), merged))


_lock = threading.Lock()
_refreshing = threading.Lock()
_current: PoolCatalog | None = None


def ttl() -> float:
    return float(getattr(settings, "BROKER_PLACEMENT_CACHE_SECONDS", 60.0))


def current() -> PoolCatalog | None:
    """The snapshot (None when the cache is off). The first call loads it; afterwards a stale
    snapshot is refreshed by a background thread while requests go on with the old one, so no
    request pays for a reload."""
    global _current
    if ttl() <= 0:
        return None
    with _lock:
        snapshot = _current
    if snapshot is None:
        with _refreshing:
            with _lock:
                if _current is None:
                    _current = load()
                return _current
    if time.monotonic() - snapshot.loaded_at >= ttl() and _refreshing.acquire(blocking=False):
        threading.Thread(target=_reload, name="pool-snapshot", daemon=True).start()
    return snapshot


def _reload() -> None:
    global _current
    try:
        fresh = load()
        with _lock:
            _current = fresh
    finally:
        connection.close()  # this thread's own connection
        _refreshing.release()


def invalidate() -> None:
    """Forget the snapshot (tests; or after bulk changes)."""
    global _current
    with _lock:
        _current = None


# Changes notified by the database (``brokers.notify``), applied by the refresher thread.
_changes = threading.Condition()
_pending_pools: set[int] = set()
_pending_centers: set[int] = set()
_pending_all = False
_refresher: threading.Thread | None = None
_refresher_stop = threading.Event()
# Changes arriving within this long are applied together.
REFRESH_GATHER_SECONDS = 0.02
# More changed ids than this: reload everything (a patch costs about as much).
PATCH_LIMIT = 2000


def changed(payload: str) -> None:
    """A ``broker_pools`` notification: ``p1,2,3`` (pools), ``c4,5`` (centers) or ``all``."""
    global _pending_all
    ids: set[int] = set()
    if payload[:1] in ("p", "c"):
        try:
            ids = {int(x) for x in payload[1:].split(",") if x}
        except ValueError:
            payload = "all"
    with _changes:
        if payload[:1] == "p":
            _pending_pools.update(ids)
        elif payload[:1] == "c":
            _pending_centers.update(ids)
        else:
            _pending_all = True
        _changes.notify()


def refresh_now() -> bool:
    """Apply the pending changes to the snapshot (the refresher's step; tests). Returns
    whether there were any."""
    global _pending_all, _current
    with _changes:
        pools, centers, everything = set(_pending_pools), set(_pending_centers), _pending_all
        _pending_pools.clear()
        _pending_centers.clear()
        _pending_all = False
    if not (pools or centers or everything):
        return False
    with _refreshing:
        with _lock:
            snapshot = _current
        if snapshot is None:
            return True  # the next request loads a fresh one
        if everything or len(pools) + len(centers) > PATCH_LIMIT:
            fresh = load()
        else:
            fresh = patched(snapshot, pools, centers)
        with _lock:
            _current = fresh
    return True


def _refresh_loop() -> None:
    try:
        while not _refresher_stop.is_set():
            with _changes:
                if not (_pending_pools or _pending_centers or _pending_all):
                    _changes.wait(1.0)
            if _refresher_stop.wait(REFRESH_GATHER_SECONDS):
                break
            try:
                refresh_now()
            except Exception:
                logger.exception("pool snapshot refresh failed; reloading on the next change")
                changed("all")
                _refresher_stop.wait(1.0)
    finally:
        connection.close()  # this thread's own connection


def start_refresher() -> None:
    """Start the thread that applies notified changes (once per process)."""
    global _refresher
    if _refresher is not None and _refresher.is_alive():
        return
    _refresher_stop.clear()
    _refresher = threading.Thread(target=_refresh_loop, name="pool-snapshot-refresh", daemon=True)
    _refresher.start()


def stop_refresher() -> None:
    global _refresher
    _refresher_stop.set()
    with _changes:
        _changes.notify()
    if _refresher is not None:
        _refresher.join(5)
    _refresher = None


def static_rejection(spec: WorkloadSpec, cand: Candidate, ctx: Context) -> str | None:
    """The first static filter (``STATIC_FILTERS``: the same functions the engine runs) that
    refuses the pool, as its reason code, or None."""
    rejection = filters.static_rejection(spec, cand, ctx)
    return None if rejection is None else rejection.reason_code


def fits_by_size(spec: WorkloadSpec, cand: Candidate) -> bool:
    """Could this pool hold the workload if it were empty?"""
    if cand.tflops <= 0:
        return False
    if spec.accelerator_model:
        return cand.accelerators >= (spec.gang_size if spec.allow_split else spec.count)
    if spec.allow_split:
        return cand.accelerators >= spec.gang_size
    return cand.accelerators * cand.tflops >= spec.a100_equivalents * A100_BF16_DENSE_TFLOPS


def fits_statically(spec: WorkloadSpec, cand: Candidate, ctx: Context | None = None) -> bool:
    """Could this pool ever take the workload, whatever is booked (every static filter, size)?"""
    ctx = ctx or Context(network=current_network())
    return static_rejection(spec, cand, ctx) is None and fits_by_size(spec, cand)


def candidates_from(
    snapshot: PoolCatalog,
    spec: WorkloadSpec,
    *,
    limit: int,
    per_model_scan: int,
    exclude: Collection[int] = (),
) -> list[Candidate] | None:
    """Candidates from the snapshot with fresh status and free capacity, or None when the
    snapshot cannot answer alone (the caller then asks the database about every pool).

    Walks each model's pools cheapest first (only the hubs within reach), in batches of
    ``per_model_scan`` that pass every static filter and fit by size, skipping ``exclude``
    (pools an earlier page proposed); reads their free capacity in one query per batch; stops
    once enough fit or the walk is over.
    """
    models = [spec.accelerator_model] if spec.accelerator_model else snapshot.models
    units = spec.a100_equivalents * A100_BF16_DENSE_TFLOPS
    ctx = Context(network=current_network())
    near = hubs_within_reach(spec, ctx.network)
    walks = {}
    for model in models:
        hubs = spec.hubs_allowed
        if near is not None:
            hubs = tuple(h for h in (hubs or snapshot.hubs.get(model, ())) if h in near)
            if not hubs:
                continue
        if spec.allow_split:
            least = spec.gang_size
        elif spec.accelerator_model:
            least = spec.count
        else:
            best = snapshot.max_tflops.get(model, 0.0)
            if best <= 0:
                continue
            least = math.ceil(units / best - 1e-9)
        walks[model] = snapshot.walk(model, hubs, least)
    cap = spec.price_cap
    spot = spec.booking_class == BookingClassSlug.SPOT
    out: list[Candidate] = []
    for _ in range(MAX_BATCHES):
        proposed: list[Candidate] = []
        for model in list(walks):
            taken = 0
            # Walks go by the pool's price. A spot request pays the spot price, which a larger
            # discount further on may bring under the cap: the walk stops only when even the
            # model's largest discount leaves the next pools over it (``price_within_cap``, a
            # static filter, skips the pools over the cap before that).
            discount = snapshot.max_discount.get(model, Decimal(0)) if spot else Decimal(0)
            for cand in walks[model]:
                if cap is not None and cand.price is not None:
                    lowest = spot_price(cand.price, discount) if spot else cand.price
                    if lowest is not None and lowest > cap:
                        del walks[model]  # nothing further is cheap enough
                        break
                if cand.pool_id in exclude:
                    continue
                if fits_statically(spec, cand, ctx):
                    proposed.append(cand)
                    taken += 1
                    if taken >= per_model_scan:
                        break
            else:
                walks.pop(model, None)  # this model's walk is over
        if proposed:
            free = fresh_free(spec.start, spec.end, [c.pool_id for c in proposed])
            for cand in proposed:
                if cand.pool_id in free and _fits_now(spec, cand, free[cand.pool_id]):
                    out.append(replace(cand, free=free[cand.pool_id]))
        if len(out) >= min(limit, MIN_CANDIDATES) or not walks:
            break
    else:
        if len(out) < MIN_CANDIDATES:
            return None
    from brokers.placement.candidates import _unit

    out.sort(key=lambda c: (c.price is None, _unit(spec, c), c.pool_id))
    return out[:limit]


def _fits_now(spec: WorkloadSpec, cand: Candidate, free: int) -> bool:
    if spec.accelerator_model or spec.allow_split:
        return free >= (spec.gang_size if spec.allow_split else spec.count)
    return free * cand.tflops >= spec.a100_equivalents * A100_BF16_DENSE_TFLOPS


def fresh_free(start: dt.datetime, end: dt.datetime, pool_ids: list[int]) -> dict[int, int]:
    """``{pool_id: free accelerators over the window}`` for those still active (one query):
    the pool's size less its most reserved slot of the window (``ledger.USED_SQL``)."""
    return {pool_id: free for pool_id, (free, _) in _fresh(start, end, pool_ids)[0].items()}


def fresh_free_and_discount(
    start: dt.datetime,
    end: dt.datetime,
    pool_ids: list[int],
    *,
    offers_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[dict[int, tuple[int, Decimal]], bool | None]:
    """``{pool_id: (free accelerators over the window, spot discount percent)}`` for those
    still active, in the same one query (``QueryCapacity`` shows the spot price: no second
    round trip for the discounts); with ``offers_window``, also whether any resale offer is
    open over that window (PostgreSQL; None elsewhere), read by the same statement."""
    return _fresh(start, end, pool_ids, offers_window=offers_window)


# Whether any resale offer is open (status, not expired by database time) over the window: the
# superset ``brokers.market.offers_in_window`` narrows down; a false one spares its query.
OFFER_PROBE_SQL = (
    "SELECT NULL, NULL, NULL, EXISTS (SELECT 1 FROM brokers_resaleoffer o WHERE "
    "o.status = 'open' AND o.start < %s AND o.\"end\" > %s AND o.expires_at > "
    "STATEMENT_TIMESTAMP())"
)


def _fresh(
    start: dt.datetime,
    end: dt.datetime,
    pool_ids: list[int],
    *,
    offers_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[dict[int, tuple[int, Decimal]], bool | None]:
    first, last = (connection.ops.adapt_datetimefield_value(x) for x in slot_bounds(start, end))
    if connection.vendor == "postgresql":
        # One array parameter: client-side binding of hundreds of placeholders costs more
        # than the query.
        params: list[str | int | list[int] | None] = [first, last, pool_ids]
        match = "p.id = ANY(%s)"
    else:
        match = f"p.id IN ({','.join(['%s'] * len(pool_ids))})"
        params = [first, last, *pool_ids]
    sql = used_expression(
        f"SELECT p.id, p.accelerators - COALESCE({USED_SQL}, 0), p.spot_discount_percent, NULL "
        f"FROM {POOL_TABLE} p JOIN {CENTER_TABLE} c ON c.id = p.center_id "
        f"WHERE {match} AND {BOOKABLE_SQL}"
    )
    probe = offers_window is not None and connection.vendor == "postgresql"
    if offers_window is not None and probe:  # one more row, same round trip and snapshot
        sql = f"{sql} UNION ALL {OFFER_PROBE_SQL}"
        o_start, o_end = offers_window
        params += [connection.ops.adapt_datetimefield_value(x) for x in (o_end, o_start)]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    offers: bool | None = None
    free: dict[int, tuple[int, Decimal]] = {}
    for pool_id, n, d, open_offers in rows:
        if pool_id is None:
            offers = bool(open_offers)
        else:
            free[pool_id] = (max(0, int(n)), Decimal(str(d)) if d is not None else Decimal(0))
    return free, offers if probe else None


def by_national_id(
    snapshot: PoolCatalog | None,
    *,
    model: str = "",
    hub: str = "",
    cluster: str = "",
    after: str = "",
    chunk: int = 100,
) -> Iterator[tuple[Candidate, str]]:
    """Bookable pools (of ``model``, in ``hub`` and ``cluster`` when given) by national id after
    ``after``, each with its cluster code: from the snapshot when there is one, else read from
    the database ``chunk`` rows at a time, in the same order (the pool's unique index). Static
    facts only: free capacity is the caller's to read fresh."""
    if snapshot is not None:
        group = snapshot.by_nid.get((model, hub), [])
        keys = snapshot.nid_keys.get((model, hub), [])
        for pool in group[bisect.bisect_right(keys, after) if after else 0 :]:
            code = snapshot.clusters.get(pool.pool_id, "")
            if not cluster or code == cluster:
                yield pool, code
        return
    where = ""
    narrow: list[str] = []
    for column, value in (("a.slug", model), ("h.code", hub), ("cl.code", cluster)):
        if value:
            where += f" AND {column} = %s"
            narrow.append(value)
    while True:
        pools, clusters = _candidates(
            where + " AND p.national_id > %s",
            [*narrow, after, chunk],
            tail=" ORDER BY p.national_id LIMIT %s",
        )
        for pool in pools:
            yield pool, clusters[pool.pool_id]
        if len(pools) < chunk:
            return
        after = pools[-1].national_id


def capacity_page(
    snapshot: PoolCatalog | None,
    *,
    start: dt.datetime,
    end: dt.datetime,
    model: str = "",
    hub: str = "",
    cluster: str = "",
    interconnect: str = "",
    max_price: Decimal | None = None,
    min_free: int = 1,
    page_size: int = 100,
    page_token: str = "",
    offers_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[list[tuple[Candidate, int, str, Decimal]], str, bool | None]:
    """One page of bookable pools with at least ``min_free`` free accelerators over the window,
    by national id after ``page_token``, each with its free count, cluster code and spot
    discount percent, and the token of the next page ("" at the end). The one capacity
    listing: every door (``services.capacity_query``) asks it, with the snapshot or without
    (``snapshot=None``: static facts read from the database, :func:`by_national_id`); free
    capacity, status and the spot discount are read fresh either way, a batch at a time, one
    query each (:func:`fresh_free_and_discount`). With ``offers_window``, the first of those
    queries also says whether any resale offer is open over it (the third value; None when no
    query ran, or not on PostgreSQL)."""
    wanted = interconnect.lower()

    def listed(pool: Candidate) -> bool:
        if max_price is not None and (pool.price is None or pool.price > max_price):
            return False
        fabrics = f"{pool.intra_node_interconnect} {pool.inter_node_interconnect}".lower()
        return not wanted or wanted in fabrics

    out: list[tuple[Candidate, int, str, Decimal]] = []
    batch: list[tuple[Candidate, str]] = []
    offers: list[bool | None] = []  # the probe's answer, asked by the first query only

    def read_batch() -> None:
        fresh, probed = fresh_free_and_discount(
            start,
            end,
            [p.pool_id for p, _ in batch],
            offers_window=None if offers else offers_window,
        )
        if not offers:
            offers.append(probed)
        out.extend(
            (p, fresh[p.pool_id][0], c, fresh[p.pool_id][1])
            for p, c in batch
            if p.pool_id in fresh and fresh[p.pool_id][0] >= min_free
        )
        batch.clear()

    pools = by_national_id(
        snapshot, model=model, hub=hub, cluster=cluster, after=page_token, chunk=page_size + 1
    )
    for pool, code in pools:
        if not listed(pool):
            continue
        batch.append((pool, code))
        # A batch is what could still complete the page (and tell whether another follows).
        if len(batch) >= page_size + 1 - len(out):
            read_batch()
            if len(out) > page_size:
                break
    if batch:
        read_batch()
    next_token = out[page_size - 1][0].national_id if len(out) > page_size else ""
    return out[:page_size], next_token, offers[0] if offers else None


def static_reason(spec: WorkloadSpec, pool: Candidate, ctx: Context | None = None) -> str | None:
    """Why a pool can never take the workload whatever is booked, or None (same reason codes
    as the SQL prefilter, in the same order)."""
    ctx = ctx or Context(network=current_network())
    reason = static_rejection(spec, pool, ctx)
    if reason is not None:
        return reason
    if pool.tflops <= 0:
        return "performance.unknown"
    if not fits_by_size(spec, pool):
        return "capacity.insufficient"
    return None


def prefilter_counts(snapshot: PoolCatalog, spec: WorkloadSpec) -> dict[str, int]:
    """The explanation counts from the snapshot: pools of the model(s) that can never fit, per
    reason, plus the model's pools that are not active. Pools that fit by size but are booked
    over the window are not counted here (they are fetched and rejected one by one)."""
    counts: dict[str, int] = defaultdict(int)
    models = [spec.accelerator_model] if spec.accelerator_model else snapshot.models
    ctx = Context(network=current_network())
    for model in models:
        counts["pool.not_active"] += snapshot.inactive.get(model, 0)
        for pool in snapshot.by_nid.get((model, ""), ()):
            reason = static_reason(spec, pool, ctx)
            if reason is not None:
                counts[reason] += 1
    return {k: v for k, v in counts.items() if v}
