"""The registry's tables as other apps may query them, built from the registry's own models and
choices: the broker's raw SQL reads these pieces instead of spelling table names, status strings
or the throughput rule again.

The raw SQL uses the aliases ``p`` (pool), ``c`` (center), ``cl`` (cluster), ``h`` (hub) and
``a`` (accelerator), as ``POOL_FROM_SQL`` joins them.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F, FloatField, Value
from django.db.models.functions import Coalesce

from registry.choices import LISTED_STATUSES, Status
from registry.models import Accelerator, Center, Cluster, Hub, Pool, Trait

# --- The throughput an accelerator counts for --------------------------------------------------
# Measured once verified, else the datasheet (BF16, else FP16), else the operator's declaration:
# (model, field) in order. Every count of capacity (A100-equivalents, placement, the national
# summary, the broker's capacity query) reads this rule, in SQL, in the ORM or in Python.
TFLOPS_RULE: tuple[tuple[str, str], ...] = (
    ("pool", "measured_tflops_per_accelerator"),
    ("accelerator", "bf16_dense_tflops"),
    ("accelerator", "fp16_dense_tflops"),
    ("pool", "declared_tflops_per_accelerator"),
)


def tflops_sql(pool: str = "p", accelerator: str = "a") -> str:
    """The rule as a SQL expression over the pool and accelerator aliases (0 when unknown)."""
    alias = {"pool": pool, "accelerator": accelerator}
    return f"COALESCE({', '.join(f'{alias[m]}.{f}' for m, f in TFLOPS_RULE)}, 0)"


def tflops_expression() -> Coalesce:
    """The rule as an ORM expression on a ``Pool`` queryset (0.0 when unknown)."""
    paths = [f if m == "pool" else f"accelerator__{f}" for m, f in TFLOPS_RULE]
    return Coalesce(*[F(p) for p in paths], Value(0.0), output_field=FloatField())


def tflops_of(pool: Pool) -> float | None:
    """The rule for one pool in Python (None when nothing is known)."""
    sources = {"pool": pool, "accelerator": pool.accelerator}
    for model, field in TFLOPS_RULE:
        value = getattr(sources[model], field)
        if value:
            return float(value)
    return None


# --- Statuses and joins --------------------------------------------------------------------------


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


# A pool takes bookings when it and its center are active.
BOOKABLE_SQL = f"p.status = '{Status.ACTIVE.value}' AND c.status = '{Status.ACTIVE.value}'"
# Listed pools: verified, whether up or not (what a firm sees in the catalog).
LISTED_SQL = f"p.status IN ({_in(LISTED_STATUSES)})"

POOL_TABLE = Pool._meta.db_table
CENTER_TABLE = Center._meta.db_table
POOL_TRAITS_TABLE = Pool.traits.through._meta.db_table
TRAIT_TABLE = Trait._meta.db_table
ACCELERATOR_TABLE = Accelerator._meta.db_table
POOL_FROM_SQL = (
    f"FROM {POOL_TABLE} p "
    f"JOIN {CENTER_TABLE} c ON c.id = p.center_id "
    f"JOIN {Cluster._meta.db_table} cl ON cl.id = c.cluster_id "
    f"JOIN {Hub._meta.db_table} h ON h.id = cl.hub_id "
    f"JOIN {ACCELERATOR_TABLE} a ON a.id = p.accelerator_id "
)
