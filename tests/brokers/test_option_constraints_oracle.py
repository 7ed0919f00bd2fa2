"""A client's chosen option against placement's own verdict on its pools (hypothesis).

Hypothesis draws a small inventory (``test_placement_oracle``'s pools: models, hubs, traits,
fabrics, node shapes, prices and spot discounts, pools and centers not all active), a spec
(its constraints: price cap, hubs allowed or excluded, centers excluded, traits, memory, node
shape, interconnect, latency class, split, gangs, booking class) and an option over those
pools, and requires ``services.option_from_parts`` to accept the option exactly when placement
would accept each of its pools and its shape:

- each pool's verdict is the placement path's SQL prefilter (``candidates.static_conditions``,
  evaluated per pool in the database: the rule the candidate query narrows on, written apart
  from the Python filters the service runs), the first condition a pool fails named by its
  reason code; for A100-equivalents, a pool without known performance fails too;
- each part must be whole gangs; more than one pool needs ``allow_split``, and a split at most
  ``max_centers`` centers; A100-equivalents must be covered.

A refusal must name exactly those (pool, reason code) pairs; an acceptance must price each
part at what the spec's class pays (spot: the pool's price less its discount in the database,
rounded as placement rounds it), within the cap. Pools come from the snapshot or from SQL
(drawn).

``make test`` runs ``EXAMPLES`` examples from a fixed seed;
``OPTION_CONSTRAINTS_EXAMPLES=1000`` runs a longer random search.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import assume, event, given
from hypothesis import strategies as st

from brokers import services
from brokers.placement import WorkloadSpec, catalog
from brokers.placement.candidates import static_conditions
from registry.models import Pool
from registry.models.catalog import A100_BF16_DENSE_TFLOPS
from registry.queries import POOL_FROM_SQL, tflops_sql
from tests.brokers.test_placement_oracle import (
    SLOT,
    _floor_slot,
    build_inventory,
    class_price,
    oracle_settings,
    pool_strategy,
    spec_strategy,
)

LONG_RUN = int(os.environ.get("OPTION_CONSTRAINTS_EXAMPLES", "0"))
EXAMPLES = LONG_RUN or 200
SEED = int(os.environ.get("OPTION_CONSTRAINTS_SEED", "0")) or 4
REFUSAL = re.compile(
    r"^(?:(?P<pool>\S+)|The option) is refused by placement \((?P<code>[\w.]+)\): "
)


def placement_verdict(spec: WorkloadSpec, pool: Pool) -> tuple[str, float]:
    """The first static condition of the placement path's SQL prefilter that the pool fails
    (its reason code, "" when none), and the pool's TFLOPS per accelerator by the same rule."""
    conditions = static_conditions(spec)
    params: list[Any] = [p for _, _, ps in conditions for p in ps]
    if conditions:
        cases = " ".join(f"WHEN NOT ({cond}) THEN '{code}'" for code, cond, _ in conditions)
        verdict = f"CASE {cases} ELSE '' END"
    else:
        verdict = "''"
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT {verdict}, {tflops_sql()} {POOL_FROM_SQL} WHERE p.id = %s",
            [*params, pool.pk],
        )
        code, tflops = cur.fetchone()
    return code, float(tflops or 0)


def expected_refusals(
    spec: WorkloadSpec, parts: list[tuple[Pool, int]]
) -> tuple[set[tuple[str, str]], dict[int, float]]:
    """The (pool, reason code) pairs placement's rules refuse the option for ("" for the option
    as a whole), and each pool's TFLOPS."""
    out: set[tuple[str, str]] = set()
    tflops: dict[int, float] = {}
    for pool, _ in parts:
        if pool.pk in tflops:
            continue
        code, tflops[pool.pk] = placement_verdict(spec, pool)
        if not code and not spec.accelerator_model and tflops[pool.pk] <= 0:
            code = "performance.unknown"
        if code:
            out.add((pool.national_id, code))
    for pool, n in parts:
        if n % spec.gang_size:
            out.add((pool.national_id, "gang.split"))
    if len(tflops) > 1 and not spec.allow_split:
        out.add(("", "split.not_allowed"))
    if spec.allow_split and len({p.center_id for p, _ in parts}) > spec.max_centers:
        out.add(("", "split.too_many_centers"))
    if not spec.accelerator_model and not out:
        covered = sum(tflops[p.pk] / A100_BF16_DENSE_TFLOPS * n for p, n in parts)
        if covered < spec.a100_equivalents - 1e-9:
            out.add(("", "capacity.insufficient"))
    return out, tflops


@pytest.mark.django_db
@oracle_settings(EXAMPLES, None if LONG_RUN else SEED)
@given(
    pools=st.lists(pool_strategy, min_size=1, max_size=5),
    snapshot=st.booleans(),
    data=st.data(),
)
def test_an_option_is_accepted_iff_placement_accepts_each_pool_and_its_shape(
    pools: list[dict[str, Any]],
    snapshot: bool,
    data: st.DataObject,
    acme: Any,
    dave: Any,
) -> None:
    drawn = data.draw(spec_strategy(pools))
    base = _floor_slot(timezone.now()) + dt.timedelta(hours=1)
    start = base + drawn.pop("start_slots") * SLOT
    # A split now and then over at most one center, so that max_centers is attacked too.
    drawn["max_centers"] = data.draw(st.integers(1, 3)) if drawn["allow_split"] else 1
    with transaction.atomic():
        made = build_inventory(pools, acme, base)
        try:
            excluded = drawn.pop("centers_excluded_idx", set())
            drawn["centers_excluded"] = tuple(
                sorted({made[i].center.national_id for i in excluded if i < len(made)})
            )
            # The option: 1 to 3 parts over the drawn pools; the spec's count is their sum, made
            # whole gangs at the last part (a part of the split may still cut a gang).
            chosen = data.draw(
                st.lists(
                    st.tuples(st.integers(0, len(made) - 1), st.integers(1, 4)),
                    min_size=1,
                    max_size=3,
                )
            )
            gang = drawn["gang_size"]
            parts = [(made[i], n) for i, n in chosen]
            total = sum(n for _, n in parts)
            if total % gang:
                last, n = parts[-1]
                parts[-1] = (last, n + gang - total % gang)
                total = sum(n for _, n in parts)
            if drawn.get("accelerator_model"):
                # Mostly the first pool's model: options that pass the model check.
                first = parts[0][0].accelerator.slug
                drawn["accelerator_model"] = data.draw(
                    st.sampled_from([first, first, first, drawn["accelerator_model"]])
                )
                drawn["count"] = total
            try:
                spec = WorkloadSpec(earliest_start=start, **drawn).validated(now=timezone.now())
            except ValidationError:  # a drawn combination the domain refuses: not the subject
                assume(False)
            named = [(p.national_id, n) for p, n in parts]
            with override_settings(BROKER_PLACEMENT_CACHE_SECONDS=60 if snapshot else 0):
                catalog.invalidate()
                try:
                    option = services.option_from_parts(spec=spec, parts=named, actor=dave)
                    refusal: list[str] = []
                except ValidationError as exc:
                    option = None
                    refusal = exc.message_dict["option"]
            wrong_model = spec.accelerator_model and any(
                p.accelerator.slug != spec.accelerator_model for p, _ in parts
            )
            context = (spec, named, refusal)
            if wrong_model:
                assert option is None and len(refusal) == 1 and " has " in refusal[0], context
                event("refused: another model")
                return
            expected, tflops = expected_refusals(spec, parts)
            if expected:
                assert option is None, context
                got = set()
                for message in refusal:
                    match = REFUSAL.match(message)
                    assert match, message
                    got.add((match["pool"] or "", match["code"]))
                assert got == expected, context
                for _, code in sorted(expected):
                    event(f"refused: {code}")
            else:
                assert option is not None, context
                event(f"accepted: {len({p.pk for p, _ in parts})} pool(s), {spec.booking_class}")
                hours = Decimal(str(spec.hours))
                cost = Decimal(0)
                for part, (pool, n) in zip(option.parts, parts, strict=True):
                    pool.refresh_from_db()
                    paid = class_price(spec, pool)
                    assert (part.pool, part.accelerators) == (pool.national_id, n)
                    assert part.price_per_accelerator_hour == paid, context
                    if spec.price_cap is not None:
                        assert paid is not None and paid <= spec.price_cap, context
                    cost += (paid or Decimal(0)) * n * hours
                assert option.cost == cost.quantize(Decimal("0.01")), context
                if not spec.accelerator_model:
                    covered = sum(tflops[p.pk] / A100_BF16_DENSE_TFLOPS * n for p, n in parts)
                    assert math.isfinite(covered) and covered >= spec.a100_equivalents - 1e-9
        finally:
            catalog.invalidate()
            transaction.set_rollback(True)
