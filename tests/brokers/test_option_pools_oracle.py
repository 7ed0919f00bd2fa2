"""``option_from_parts`` from the pool snapshot agrees with the ORM's visibility rules.

A booking from a chosen option names its pools; ``services.option_from_parts`` resolves the
pools the process's snapshot holds (bookable, hence listed: every actor sees them) without a
round trip, and reads only the others through ``registry.selectors.pools_visible_to`` (listed
pools in listed centers for everyone, a firm's own pools in any state, all for staff). This
test draws pools of three owners in every pool and center state, an actor (the firm, each
operator, a member, staff) and an option (known, unknown, repeated pools; counts; a model or
none) and requires the same answer with the snapshot and without: the same option (pool ids,
centers, hubs, models, prices, currency, cost) or the same refusal.

``make test`` runs ``EXAMPLES`` examples from a fixed seed; ``OPTION_ORACLE_EXAMPLES=500`` runs
a longer random search.
"""

from __future__ import annotations

import itertools
import os
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import override_settings
from hypothesis import event, given
from hypothesis import strategies as st

from brokers import services
from brokers.placement import catalog
from registry.choices import Status
from registry.models import Accelerator, Center, Cluster, Pool
from tests.brokers.conftest import spec
from tests.brokers.test_placement_oracle import oracle_settings

pytestmark = pytest.mark.django_db

LONG_RUN = int(os.environ.get("OPTION_ORACLE_EXAMPLES", "0"))
EXAMPLES = LONG_RUN or 40
SEED = 20261130
MODELS = ["nvidia-a100-80g", "nvidia-h100-sxm"]
STATUSES = [s.value for s in Status]
OWNERS = ["acme", "rival", "deepai"]
ACTORS = ["dave", "alice", "bob", "carol", "pat"]
_serial = itertools.count(1)

# Mostly bookable (snapshot) pools, with every other state drawn often enough to matter.
status_strategy = st.one_of(st.just("active"), st.sampled_from(STATUSES))
pool_strategy = st.fixed_dictionaries(
    {
        "owner": st.sampled_from(OWNERS),
        "status": status_strategy,
        "center_status": status_strategy,
        "model": st.sampled_from(MODELS),
        "price": st.sampled_from([None, "2.50", "9.00"]),
        "same_center": st.booleans(),
    }
)


def build(pools: list[dict[str, Any]], orgs: dict[str, Any]) -> list[Pool]:
    made: list[Pool] = []
    center: Center | None = None
    for drawn in pools:
        n = next(_serial)
        if not (drawn["same_center"] and center is not None):
            center = Center.objects.create(
                operator=orgs[drawn["owner"]],
                cluster=Cluster.objects.get(code="ZW"),
                national_id=f"CN-V-ZW-{n:05d}",
                name=f"Visibility center {n}",
                latitude=37.5,
                longitude=105.2,
                pue=1.2,
                green_power_share=0.5,
                agent_endpoint="127.0.0.1:50061",
                status=drawn["center_status"],
            )
        made.append(
            Pool.objects.create(
                center=center,
                national_id=f"{center.national_id}-P{n:05d}",
                name=f"Visibility pool {n}",
                accelerator=Accelerator.objects.get(slug=drawn["model"]),
                accelerators_per_node=8,
                nodes=1,
                price_per_accelerator_hour=None
                if drawn["price"] is None
                else Decimal(drawn["price"]),
                currency="CNY",
                status=drawn["status"],
            )
        )
    return made


def answer(actor: Any, model: str, count: int, parts: list[tuple[str, int]]) -> Any:
    """The option as comparable values, or the refusal."""
    try:
        option = services.option_from_parts(
            # A split over any pools and a small A100-equivalent need: the spec's constraints
            # let most options through (``test_option_constraints`` attacks them).
            spec=spec(
                accelerator_model=model,
                count=count,
                allow_split=True,
                max_centers=8,
                **({} if model else {"a100_equivalents": 1.0}),
            ),
            parts=parts,
            actor=actor,
        )
    except ValidationError as exc:
        return ("refused", exc.message_dict)
    return (
        "option",
        [
            (
                p.pool_id,
                p.pool,
                p.center,
                p.hub,
                p.accelerator,
                p.accelerators,
                p.price_per_accelerator_hour,
                p.currency,
            )
            for p in option.parts
        ],
        option.cost,
        option.currency,
    )


@oracle_settings(EXAMPLES, None if LONG_RUN else SEED)
@given(pools=st.lists(pool_strategy, min_size=1, max_size=8), data=st.data())
def test_the_snapshot_resolves_an_option_as_the_visibility_rules_do(
    pools: list[dict[str, Any]],
    data: st.DataObject,
    acme: Any,
    rival: Any,
    deepai: Any,
    dave: Any,
    alice: Any,
    bob: Any,
    carol: Any,
    pat: Any,
) -> None:
    actors = {"dave": dave, "alice": alice, "bob": bob, "carol": carol, "pat": pat}
    orgs = {"acme": acme, "rival": rival, "deepai": deepai}
    with transaction.atomic():
        made = build(pools, orgs)
        try:
            for _ in range(3):  # several options of one inventory
                actor = actors[data.draw(st.sampled_from(ACTORS))]
                names = [p.national_id for p in made]
                parts = data.draw(
                    st.lists(
                        st.tuples(st.sampled_from(names), st.sampled_from([1, 2, 3, 0])),
                        min_size=1,
                        max_size=3,
                    )
                )
                if data.draw(st.integers(0, 5)) == 0:  # now and then a pool nobody has
                    parts.append(("CN-V-ZW-99999-P99999", 1))
                # Mostly the model of the first pool named and the parts' sum: options that
                # pass the checks, so that the pools' facts are compared, not only refusals.
                first = next((p for p in made if p.national_id == parts[0][0]), made[0])
                model = data.draw(st.sampled_from([first.accelerator.slug, "", *MODELS]))
                total = sum(n for _, n in parts)
                count = total if data.draw(st.integers(0, 3)) else total + 1
                answers = []
                for snapshot in (False, True):
                    # Not the ``settings`` fixture: it nests a layer per assignment.
                    with override_settings(BROKER_PLACEMENT_CACHE_SECONDS=60 if snapshot else 0):
                        catalog.invalidate()
                        answers.append(answer(actor, model, count, parts))
                by_orm, by_snapshot = answers
                assert by_snapshot == by_orm, (parts, model, count)
                event(by_orm[0])
                states = {(p.status, p.center.status) for p in made if p.national_id in dict(parts)}
                if any(state != ("active", "active") for state in states):
                    event("a pool the snapshot does not hold")
                if any(state == ("active", "active") for state in states):
                    event("a pool from the snapshot")
                named = [p for p in made if p.national_id in dict(parts)]
                if by_orm[0] == "option" and any(
                    p.status not in ("active", "degraded", "offline")
                    or p.center.status not in ("active", "degraded", "offline")
                    for p in named
                ):
                    event("an unlisted pool in an option (its owner's, or staff)")
        finally:
            catalog.invalidate()
            transaction.set_rollback(True)


def test_a_pool_from_the_snapshot_costs_no_query(
    dave: Any, acme: Any, active_pool: Any, settings: Any, django_assert_num_queries: Any
) -> None:
    """A listed, bookable pool is resolved without the database once the snapshot is loaded;
    an unlisted one of the firm's own (or any pool the snapshot lacks) costs one query."""
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 60
    catalog.invalidate()
    try:
        pool = active_pool(acme, size=8)
        assert catalog.current() is not None
        with django_assert_num_queries(0):
            option = services.option_from_parts(
                spec=spec(count=4), parts=[(pool.national_id, 4)], actor=dave
            )
        assert [p.pool_id for p in option.parts] == [pool.pk]
        with django_assert_num_queries(1), pytest.raises(ValidationError):
            services.option_from_parts(
                spec=spec(count=4), parts=[("CN-V-ZW-99999-P99999", 4)], actor=dave
            )
    finally:
        catalog.invalidate()
