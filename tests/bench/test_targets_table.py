"""The Targets table that ends ``bench/broker_bench.py`` (``bench/targets.py``): rendering only,
from made-up figures; nothing here is timed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.targets import Profile, issue_targets, render, spy_profile

ISSUE_ROWS = [
    "bookings/s in process, 16 clients, spread over 10,000 pools",
    "bookings/s through gRPC, 2 broker processes, 8 client threads, spread",
    "bookings/s through gRPC on 32 contended pools (cancel on refusal)",
    "booking latency p50 / p99 through gRPC at that load (spread)",
    "gRPC QueryCapacity calls/s",
    "concurrent WatchBooking streams on one broker process",
    "a new or changed pool visible to placement",
]


def run(**grpc: Any) -> dict[str, Any]:
    spread = {"ok": 178.0, "p50": 43.5, "p99": 76.4, "oversold": 0, "errors": {}}
    contended = {"ok": 126.0, "oversold": 0, "errors": {}}
    g: dict[str, Any] = {
        "spread": spread,
        "contended": contended,
        "query": 92.0,
        "echo": 4983.0,
        "visibility": (0.73, 0.78),
    }
    g.update(grpc)
    return {
        "spread": (132.0, 132.0, 0, 0),
        "pgbench": 1731.0,
        "grpc": g,
        "watch": {"streams": 1000, "opened": 1000, "within_100ms": 1000},
        "oversold_in_process": 0,
    }


PROFILE = Profile(
    5000,
    own=[(0.56, "wait (psycopg/connection.py)"), (0.05, "select (selectors.py)")],
    inclusive=[
        (0.54, "Book (brokers/rpc/server.py)"),
        (0.44, "option_from_parts (brokers/services.py)"),
        (0.30, "_in_a_batch (brokers/booking_sql.py)"),
        (0.10, "never shown (brokers/x.py)"),
    ],
    path="bench/profiles/after.summary.txt",
)


CONTENDED_PROFILE = Profile(
    2000,
    own=[(0.70, "wait (psycopg/connection.py)")],
    inclusive=[(0.60, "Book (brokers/rpc/server.py)")],
    path="bench/profiles/after-contended.summary.txt",
)


def lines_of(table: str) -> dict[str, str]:
    """Each issue row's line of the table."""
    return {
        row: next(line for line in table.splitlines() if line.strip().startswith(row))
        for row in ISSUE_ROWS
    }


def test_every_issue_row_with_its_figure_yardstick_target_and_verdict() -> None:
    table = render(issue_targets(run()), {"booking": PROFILE})
    assert table.splitlines()[0].startswith("Targets")
    rows = lines_of(table)
    assert rows[ISSUE_ROWS[0]].split()[-1] == "MISSED"
    assert "132/s; pgbench 1731 TPS -> 0.08x" in rows[ISSUE_ROWS[0]]
    assert ">= 0.3x pgbench" in rows[ISSUE_ROWS[0]]
    assert "178/s" in rows[ISSUE_ROWS[1]] and rows[ISSUE_ROWS[1]].endswith("MISSED")
    assert "126/s, 0 oversold, 0 ABORTED" in rows[ISSUE_ROWS[2]]
    assert "43.5 / 76.4 ms" in rows[ISSUE_ROWS[3]] and "<= 15 / 50 ms" in rows[ISSUE_ROWS[3]]
    assert "92/s; bare echo 4983/s -> 0.02x" in rows[ISSUE_ROWS[4]]
    assert rows[ISSUE_ROWS[5]].endswith("met") and "1000 of 1000" in rows[ISSUE_ROWS[5]]
    assert (
        rows[ISSUE_ROWS[6]].endswith("met") and "new 0.73 s, changed 0.78 s" in rows[ISSUE_ROWS[6]]
    )


def test_a_missed_row_shows_the_top_of_its_profile() -> None:
    table = render(issue_targets(run()), {"booking": PROFILE})
    lines = table.splitlines()
    spread = lines.index(lines_of(table)[ISSUE_ROWS[1]])
    assert "bench/profiles/after.summary.txt" in lines[spread + 1]
    assert lines[spread + 2].strip() == (
        "own: 56.0% wait (psycopg/connection.py); 5.0% select (selectors.py)"
    )
    assert lines[spread + 3].strip() == (
        "inclusive: 54.0% Book (brokers/rpc/server.py); 44.0% option_from_parts "
        "(brokers/services.py); 30.0% _in_a_batch (brokers/booking_sql.py)"
    )
    assert "never shown" not in table  # the top three only
    # The contended row has its own profiled run; without it, it says how to get one.
    contended = lines.index(lines_of(table)[ISSUE_ROWS[2]])
    assert "--profile DIR (a full or --booking-only run)" in lines[contended + 1]
    # Met rows carry nothing under them; QueryCapacity was not profiled by this run.
    watch = lines.index(lines_of(table)[ISSUE_ROWS[5]])
    assert lines[watch + 1].strip().startswith(ISSUE_ROWS[6])
    query = lines.index(lines_of(table)[ISSUE_ROWS[4]])
    assert "--query-only --profile DIR" in lines[query + 1]
    assert lines[query + 2].strip().startswith(ISSUE_ROWS[5])


def test_the_contended_row_is_explained_by_its_own_profile() -> None:
    table = render(issue_targets(run()), {"booking": PROFILE, "contended": CONTENDED_PROFILE})
    lines = table.splitlines()
    contended = lines.index(lines_of(table)[ISSUE_ROWS[2]])
    assert "bench/profiles/after-contended.summary.txt" in lines[contended + 1]
    assert lines[contended + 2].strip() == "own: 70.0% wait (psycopg/connection.py)"


def test_without_a_profile_a_missed_row_says_how_to_get_one() -> None:
    table = render(issue_targets(run()), {})
    lines = table.splitlines()
    spread = lines.index(lines_of(table)[ISSUE_ROWS[1]])
    assert "--profile DIR (a full or --booking-only run)" in lines[spread + 1]


def test_rows_a_run_did_not_measure_say_so() -> None:
    booking_only = run()
    del booking_only["watch"]
    del booking_only["grpc"]["visibility"]
    rows = lines_of(render(issue_targets(booking_only), {}))
    for row in ISSUE_ROWS[5:]:
        assert "not measured" in rows[row] and rows[row].endswith("not measured")
    query_only = {"grpc": {"query": 3000.0, "echo": 5000.0}}
    rows = lines_of(render(issue_targets(query_only), {}))
    assert rows[ISSUE_ROWS[4]].endswith("met") and "0.60x" in rows[ISSUE_ROWS[4]]
    assert all(rows[row].endswith("not measured") for row in ISSUE_ROWS if row != ISSUE_ROWS[4])


def test_oversold_or_aborted_misses_the_contended_row_whatever_the_rate() -> None:
    rows = lines_of(
        render(
            issue_targets(run(contended={"ok": 900.0, "oversold": 1, "errors": {"ABORTED": 2}})), {}
        )
    )
    assert "900/s, 1 oversold, 2 ABORTED" in rows[ISSUE_ROWS[2]]
    assert rows[ISSUE_ROWS[2]].endswith("MISSED")
    fine = lines_of(
        render(issue_targets(run(contended={"ok": 300.0, "oversold": 0, "errors": {}})), {})
    )
    assert fine[ISSUE_ROWS[2]].endswith("met")


def test_the_py_spy_summary_keeps_own_frames_and_the_projects_inclusive_ones(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "spy.collapsed.txt"
    raw.write_text(
        "process 1;Book (brokers/rpc/server.py:10);wait (psycopg/connection.py:99) 6\n"
        "process 1;Book (brokers/rpc/server.py:11);fingerprint (brokers/services.py:5) 2\n"
        "process 1;select (selectors.py:3) 2\n"
        "process 2 5\n"  # outside Python: not counted
    )
    profile = spy_profile(raw)
    assert profile.samples == 10
    assert profile.own[0] == (0.6, "wait (psycopg/connection.py)")
    assert profile.inclusive[0] == (0.8, "Book (brokers/rpc/server.py)")
    assert all("(brokers/" in frame for _, frame in profile.inclusive)
