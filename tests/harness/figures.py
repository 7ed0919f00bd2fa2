"""The figure every reliability test prints (RELIABILITY "The figure format").

One line per test, printed even when the test fails (from the fixture's teardown):
``FIGURE {"test":"X3.pg_restart_fast","attempted":..,"acked":..,"lost":0,...}``, and the same JSON
appended to ``test-artifacts/figures.jsonl`` (gitignored) for the README's fault table.

Shared keys: attempted (operations issued), acked (successes with an object id), lost (an acked
object missing after recovery), doubled (one logical operation with two effects), oversold
(pools seen over capacity by the oversell sampler during the run), recovery_s (fault removed ->
first acked operation). Every value is measured by the test; a key the row cannot have (no
capacity is booked, so nothing can be oversold) is None, printed ``n/a`` in the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.harness.procs import ROOT

ARTIFACTS = ROOT / "test-artifacts"
FIGURES_FILE = ARTIFACTS / "figures.jsonl"


class Figure(dict[str, Any]):
    """The figure of one test: a dict the test fills; ``emit()`` prints and appends it once."""

    def __init__(self, test: str, **fields: Any) -> None:
        super().__init__(test=test, **fields)
        self._emitted = False

    def emit(self, *, passed: bool | None = None, path: Path = FIGURES_FILE) -> str:
        if passed is not None:
            self["pass"] = passed
        line = json.dumps(self, default=_jsonable, separators=(",", ":"))
        if not self._emitted:
            self._emitted = True
            # To the real stdout: the figure shows with `-s`, and in the captured output otherwise.
            print(f"FIGURE {line}", file=sys.stdout, flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(line + "\n")
        return line


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


# --- make fault-table ------------------------------------------------------------------------

TABLE_KEYS = ("attempted", "acked", "lost", "doubled", "oversold", "recovery_s")


def _variant(figure: dict[str, Any]) -> str:
    """What distinguishes two figures of one test (fault mode, AOF on or off...)."""
    parts = [f"{k}={figure[k]}" for k in ("mode", "fault", "aof") if k in figure]
    return ", ".join(parts)


def cell(value: Any) -> str:
    """A table cell: ``n/a`` for a figure the row cannot have (None) or did not measure."""
    return "n/a" if value is None else str(value)


def fault_table(path: Path = FIGURES_FILE) -> str:
    """The README's fault table from the latest figure of every X-row test (and variant)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            figure = json.loads(line)
        except ValueError:
            continue
        if str(figure.get("test", "")).startswith("X"):
            latest[(figure["test"], _variant(figure))] = figure
    rows = ["| row | variant | " + " | ".join(TABLE_KEYS) + " | pass |"]
    rows.append("|" + " --- |" * (len(TABLE_KEYS) + 3))

    def order(item: tuple[tuple[str, str], dict[str, Any]]) -> tuple[int, str, str]:
        (test, variant), _ = item
        digits = "".join(c for c in test.split(".")[0] if c.isdigit())
        return (int(digits or 0), test, variant)

    for (test, variant), figure in sorted(latest.items(), key=order):
        cells = [cell(figure.get(k)) for k in TABLE_KEYS]
        rows.append(f"| {test} | {variant} | " + " | ".join(cells) + f" | {figure.get('pass')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(fault_table())
