"""The registry owns its tables (issue 16): the throughput rule exists once and reads the same in
SQL, in the ORM and in Python; no other app spells a registry table or a status string."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from registry.choices import LISTED_STATUSES, Status
from registry.models import Accelerator, Pool
from registry.queries import (
    BOOKABLE_SQL,
    LISTED_SQL,
    POOL_FROM_SQL,
    tflops_expression,
    tflops_of,
    tflops_sql,
)
from tests.factories import PoolFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_sql_orm_and_python_count_the_same_throughput() -> None:
    """Each source of the rule in turn: measured, datasheet BF16, datasheet FP16, declared."""
    only_fp16 = Accelerator.objects.create(
        slug="test-fp16-only", vendor="T", model="F", origin="domestic", fp16_dense_tflops=150.0
    )
    unknown = Accelerator.objects.create(
        slug="test-unknown", vendor="T", model="U", origin="domestic"
    )
    a100 = Accelerator.objects.get(slug="nvidia-a100-80g")
    pools = {
        "measured": PoolFactory(accelerator=a100, measured_tflops_per_accelerator=250.0),
        "bf16": PoolFactory(accelerator=a100),
        "fp16": PoolFactory(accelerator=only_fp16, declared_tflops_per_accelerator=99.0),
        "declared": PoolFactory(accelerator=unknown, declared_tflops_per_accelerator=77.0),
        "none": PoolFactory(accelerator=unknown, declared_tflops_per_accelerator=None),
    }
    expected = {
        "measured": 250.0,
        "bf16": a100.bf16_dense_tflops,
        "fp16": 150.0,
        "declared": 77.0,
        "none": 0.0,
    }
    ids = {p.pk: name for name, p in pools.items()}
    orm = dict(
        Pool.objects.filter(pk__in=ids).annotate(t=tflops_expression()).values_list("pk", "t")
    )
    with connection.cursor() as cur:
        marks = ",".join(["%s"] * len(ids))
        cur.execute(f"SELECT p.id, {tflops_sql()} {POOL_FROM_SQL}WHERE p.id IN ({marks})", [*ids])
        sql = dict(cur.fetchall())
    for pk, name in ids.items():
        python = tflops_of(Pool.objects.get(pk=pk)) or 0.0
        assert float(orm[pk]) == float(sql[pk]) == python == expected[name], name


def test_the_status_pieces_come_from_the_choices() -> None:
    assert BOOKABLE_SQL.count(f"'{Status.ACTIVE.value}'") == 2
    assert set(re.findall(r"'(\w+)'", LISTED_SQL)) == set(LISTED_STATUSES)


# Raw SQL outside the registry that names a registry table or a pool/center status literally.
_TABLE = re.compile(r"\bregistry_(pool|center|cluster|hub|accelerator|trait)\w*")
_STATUS = re.compile(
    r"status\s*(=|<>|!=|IN)\s*\(?\s*'(" + "|".join(v for v, _ in Status.choices) + r")'"
)


def _offenders(pattern: re.Pattern[str]) -> list[str]:
    found = []
    for package in ("brokers", "verification", "agent", "interconnect"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return found


@pytest.mark.parametrize("pattern", [_TABLE, _STATUS], ids=["tables", "statuses"])
def test_no_other_app_spells_the_registry_tables_or_statuses(pattern: Any) -> None:
    assert _offenders(pattern) == []


def test_the_scan_finds_a_planted_offender(tmp_path: Path) -> None:
    """The adversary: the patterns catch what they are meant to catch."""
    assert _TABLE.search('cur.execute("SELECT id FROM registry_pool WHERE")')
    assert _STATUS.search("WHERE p.status = 'active' AND")
    assert _STATUS.search("p.status IN ('active', 'degraded')")
    assert not _STATUS.search("b.status = %s")
