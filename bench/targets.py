"""The "Targets" table that ends ``bench/broker_bench.py``: issue 14's target rows, met or missed.

Every row of the issue's table, with the figure measured in this run next to its yardstick
(pgbench, the bare echo server) where the target is a ratio, the target, and ``met`` or
``MISSED``; a row this run did not measure (``--booking-only`` skips the streams and the pool
visibility) says so. Under a missed row, when the bench ran with ``--profile``, the top entries
of the py-spy summary that covers it (own and inclusive CPU share), which show what bounds it,
and the summary's path.

No side effects on import (unlike ``broker_bench``, which points Django at the bench's
database): the unit test imports this module alone.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A frame of the project's own code: ``function (brokers/services.py)``.
OWN_FRAME = re.compile(r"\((brokers|registry|rpckit|interconnect|verification|agent|protos)/")


@dataclass
class Profile:
    """A py-spy summary: samples, and the top frames by own and by inclusive share."""

    samples: int
    own: list[tuple[float, str]]
    inclusive: list[tuple[float, str]]
    path: str = ""  # the summary file, when written

    def text(self) -> str:
        if not self.samples:
            return "  (no samples)"
        lines = [f"  {self.samples} samples (CPU, every thread of the serving broker processes)"]
        lines.append("  own time, top functions:")
        lines += [f"    {share:6.1%}  {frame}" for share, frame in self.own]
        lines.append("  inclusive time, the project's functions:")
        lines += [f"    {share:6.1%}  {frame}" for share, frame in self.inclusive]
        return "\n".join(lines)


def spy_profile(raw: Path, top: int = 14) -> Profile:
    """Where the broker's CPU went, from py-spy's collapsed stacks: each line is
    ``frame;frame;... samples``, a frame ``function (file:line)``. Inclusive shares are kept
    for the project's own frames only."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        if all(f.startswith("process ") for f in frames):
            continue  # a process sampled outside Python (the supervising parent's wait)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            if OWN_FRAME.search(frame):
                inclusive[frame] += n  # our own code, including what it calls
    if not total:
        return Profile(0, [], [])
    return Profile(
        total,
        [(n / total, frame) for frame, n in own.most_common(top)],
        [(n / total, frame) for frame, n in inclusive.most_common(top)],
    )


@dataclass
class Target:
    """One row of issue 14's table as this run measured it. ``met`` None: not measured.
    ``profile`` names the profile that covers the row ("booking", "query"), if any."""

    figure: str
    measured: str
    target: str
    met: bool | None
    profile: str = ""
    notes: list[str] = field(default_factory=list)


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def issue_targets(results: dict[str, Any]) -> list[Target]:
    """Issue 14's seven target rows from what the bench measured (keys it did not measure give
    rows marked not measured). ``results``: ``spread`` (in process: bookings/s, answered/s,
    aborted, oversold), ``pgbench`` (TPS), ``grpc`` (``spread`` and ``contended`` runs,
    ``query`` and ``echo`` calls/s, ``visibility`` (new, changed) seconds), ``watch``, and
    ``oversold_in_process`` (the in-process runs' oversold sum)."""
    g: dict[str, Any] = results.get("grpc", {})
    rows: list[Target] = []

    if "spread" in results and "pgbench" in results:
        ok, pgbench = results["spread"][0], results["pgbench"]
        ratio = _ratio(ok, pgbench)
        rows.append(
            Target(
                "bookings/s in process, 16 clients, spread over 10,000 pools",
                f"{ok:.0f}/s; pgbench {pgbench:.0f} TPS -> {ratio:.2f}x",
                ">= 0.3x pgbench",
                ratio >= 0.3,
                notes=["in process: see the cProfile of one client (table 2)"]
                if "booking_profile" in results
                else [],
            )
        )
    else:
        rows.append(
            Target(
                "bookings/s in process, 16 clients, spread over 10,000 pools",
                "not measured",
                ">= 0.3x pgbench",
                None,
            )
        )

    sp, co = g.get("spread"), g.get("contended")
    rows.append(
        Target(
            "bookings/s through gRPC, 2 broker processes, 8 client threads, spread",
            "not measured" if sp is None else f"{sp['ok']:.0f}/s",
            ">= 500/s",
            None if sp is None else sp["ok"] >= 500,
            "booking",
        )
    )
    if co is None:
        rows.append(
            Target(
                "bookings/s through gRPC on 32 contended pools (cancel on refusal)",
                "not measured",
                ">= 250/s, 0 oversold, 0 deadlocks as errors",
                None,
                "contended",
            )
        )
    else:
        oversold = int(co["oversold"]) + int((sp or {}).get("oversold", 0))
        oversold += int(results.get("oversold_in_process", 0))
        aborted = sum(
            n for r in (sp, co) if r for code, n in r["errors"].items() if code.endswith("ABORTED")
        )
        rows.append(
            Target(
                "bookings/s through gRPC on 32 contended pools (cancel on refusal)",
                f"{co['ok']:.0f}/s, {oversold} oversold, {aborted} ABORTED",
                ">= 250/s, 0 oversold, 0 deadlocks as errors",
                co["ok"] >= 250 and oversold == 0 and aborted == 0,
                "contended",
            )
        )
    rows.append(
        Target(
            "booking latency p50 / p99 through gRPC at that load (spread)",
            "not measured" if sp is None else f"{sp['p50']:.1f} / {sp['p99']:.1f} ms",
            "<= 15 / 50 ms",
            None if sp is None else sp["p50"] <= 15 and sp["p99"] <= 50,
            "booking",
        )
    )
    if "query" in g and g.get("echo"):
        ratio = _ratio(g["query"], g["echo"])
        rows.append(
            Target(
                "gRPC QueryCapacity calls/s",
                f"{g['query']:.0f}/s; bare echo {g['echo']:.0f}/s -> {ratio:.2f}x",
                ">= 0.5x echo",
                ratio >= 0.5,
                "query",
            )
        )
    else:
        rows.append(
            Target("gRPC QueryCapacity calls/s", "not measured", ">= 0.5x echo", None, "query")
        )
    w = results.get("watch")
    rows.append(
        Target(
            "concurrent WatchBooking streams on one broker process",
            "not measured"
            if w is None
            else f"{w['opened']} open, {w['within_100ms']} of {w['streams']} events <= 100 ms",
            ">= 1,000, each event <= 100 ms after commit",
            None
            if w is None
            else w["streams"] >= 1000
            and w["opened"] >= w["streams"]
            and w["within_100ms"] == w["streams"],
        )
    )
    seen = g.get("visibility")
    if seen is None:
        rows.append(
            Target("a new or changed pool visible to placement", "not measured", "<= 1 s", None)
        )
    else:
        new, changed = seen

        def shown(v: float | None) -> str:
            return "not seen" if v is None else f"{v:.2f} s"

        rows.append(
            Target(
                "a new or changed pool visible to placement",
                f"new {shown(new)}, changed {shown(changed)}",
                "<= 1 s",
                new is not None and changed is not None and new <= 1 and changed <= 1,
            )
        )
    return rows


# The bench run that profiles each kind of row.
PROFILED_BY = {
    "booking": "--profile DIR (a full or --booking-only run)",
    "contended": "--profile DIR (a full or --booking-only run)",
    "query": "--query-only --profile DIR",
}


def render(rows: list[Target], profiles: dict[str, Profile], top: int = 3) -> str:
    """The table. Under each missed row: the top ``top`` own and inclusive entries of the
    profile that covers it (and its summary's path), or which run would profile it."""
    wide = max(len(r.figure) for r in rows)
    value = max(len(r.measured) for r in rows)
    aim = max(len(r.target) for r in rows)
    shown: set[str] = set()
    lines = [
        "Targets (issue 14; each figure measured in this run, with its yardstick)",
        f"  {'figure':<{wide}}  {'measured':<{value}}  {'target':<{aim}}  verdict",
    ]
    for row in rows:
        verdict = "not measured" if row.met is None else "met" if row.met else "MISSED"
        lines.append(
            f"  {row.figure:<{wide}}  {row.measured:<{value}}  {row.target:<{aim}}  {verdict}"
        )
        if row.met is not False:
            continue
        lines += [f"      {note}" for note in row.notes]
        profile = profiles.get(row.profile) if row.profile else None
        if profile is not None and profile.samples and row.profile in shown:
            lines.append("      what bounds it: the same profile as above")
        elif profile is not None and profile.samples:
            shown.add(row.profile)
            where = f" ({profile.path})" if profile.path else ""
            lines.append(f"      what bounds it, py-spy of the broker{where}:")
            lines.append(
                "        own: "
                + "; ".join(f"{share:.1%} {frame}" for share, frame in profile.own[:top])
            )
            lines.append(
                "        inclusive: "
                + "; ".join(f"{share:.1%} {frame}" for share, frame in profile.inclusive[:top])
            )
        elif profile is not None and profile.path:
            lines.append(f"      profile (no samples): {profile.path}")
        elif row.profile:
            lines.append(
                f"      (not profiled in this run: {PROFILED_BY[row.profile]} profiles what "
                "bounds it)"
            )
    return "\n".join(lines)
