"""X3/X4/X5 on the REST API: PostgreSQL restarted, crashed, or its connections cut under writes.

gunicorn (2 sync workers) runs against a private PostgreSQL; two writer threads register
centers and pools with the demo operator's token and retry 503s with the same name. The
figure counts attempted, acked, lost (an acked object missing afterwards), doubled (a name
with two rows), 500s (never allowed: an unreachable database is a 503), 5xx after recovery,
and the recovery time (cluster back -> first success). Nothing here books capacity, so
``oversold`` is None (``n/a``). A writer thread that died fails the test (``writer_errors``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness.figures import Figure, rounded
from tests.harness.load import Ledger, RestWriter
from tests.harness.platform import Platform, http_json, http_status
from tests.harness.procs import wait_until

pytestmark = pytest.mark.slow

WRITERS = 2


def _start_writers(base: str, token: str, ledger: Ledger, tag: str) -> list[RestWriter]:
    writers = [RestWriter(base, token, ledger, f"{tag}{n}") for n in range(WRITERS)]
    for w in writers:
        w.start()
    return writers


def _stop(writers: list[RestWriter]) -> None:
    for w in writers:
        w.stop()
    for w in writers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in writers), "a writer thread hangs"


def _settle(platform: Platform, ledger: Ledger, fig: Figure, tag: str) -> None:
    """Compare the writers' ledger with the database; fill the shared figure keys."""
    centers = dict(
        platform.sql(
            "SELECT name, national_id FROM registry_center WHERE name LIKE %s", (f"{tag}%",)
        )
    )
    pools = dict(
        platform.sql("SELECT name, national_id FROM registry_pool WHERE name LIKE %s", (f"{tag}%",))
    )
    doubled = platform.sql(
        "SELECT name FROM registry_center WHERE name LIKE %s GROUP BY name HAVING count(*) > 1",
        (f"{tag}%",),
    )
    lost = [n for n, nid in ledger.acked_centers.items() if centers.get(n) != nid]
    lost += [n for n, nid in ledger.acked_pools.items() if pools.get(n) != nid]
    statuses = Counter(s for _, s in ledger.requests)
    fig.update(
        attempted=ledger.attempted,
        acked=len(ledger.acked_centers) + len(ledger.acked_pools),
        requests=len(ledger.requests),
        lost=len(lost),
        doubled=len(doubled),
        oversold=None,  # no capacity is booked through these endpoints
        writer_errors=len(ledger.errors),
        http_503=statuses.get(503, 0),
        http_500=statuses.get(500, 0),
        no_answer=statuses.get(None, 0),
        resolved_by_lookup=ledger.resolved_by_lookup,
        unresolved=ledger.unresolved,
    )


def _assert_invariants(fig: Figure, ledger: Ledger) -> None:
    assert ledger.errors == [], "a writer thread died:\n" + "\n".join(ledger.errors[:3])
    assert fig["acked"] > 0
    assert fig["lost"] == 0
    assert fig["doubled"] == 0
    assert fig["http_500"] == 0, "an unreachable database must answer 503, never 500"
    assert fig["5xx_after_recovery"] == 0
    assert fig["unresolved"] == 0
    assert fig["recovery_s"] is not None


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_writes_survive_a_database_restart(
    mode: str, make_platform: Callable[..., Platform], figure: Callable[..., Figure]
) -> None:
    """X3 (``pg_ctl restart -m fast``) and X4 (``-m immediate``: a crash and WAL recovery).

    In the crash variant the cluster stays down for 2 s, long enough to see that readiness
    says 503 and that every write in the window is a 503 (with Retry-After), never a 500.
    """
    name = "X3.pg_restart_fast" if mode == "fast" else "X4.pg_crash"
    fig = figure(name, mode=mode, writers=WRITERS, recovery_s=None)
    platform = make_platform()
    _, base = platform.start_web()
    ledger = Ledger()
    tag = f"x-{mode}-"
    writers = _start_writers(base, platform.token(), ledger, tag)
    try:
        wait_until(lambda: len(ledger.acked_centers) >= 10, timeout=60, what="warm-up writes")
        fault_at = time.monotonic()
        if mode == "fast":
            platform.pg.restart("fast")
        else:
            platform.pg.stop("immediate")
            assert http_status(f"{base}/readyz") == 503
            status, body, headers = http_json(
                "POST", f"{base}/api/v1/centers/", token=platform.token(), body={"name": "x"}
            )
            assert status == 503 and headers.get("Retry-After") == "5", (status, body)
            time.sleep(2.0)
            platform.pg.start()
        back_at = time.monotonic()
        fig["outage_s"] = rounded(back_at - fault_at)
        first = wait_until(
            lambda: ledger.first_success_after(back_at), timeout=30, what="first success"
        )
        fig["recovery_s"] = rounded(first - back_at)
        time.sleep(3.0)  # steady state after recovery: every request must succeed
        assert http_status(f"{base}/readyz") == 200
    finally:
        _stop(writers)
    after = ledger.statuses_between(fig["recovery_s"] + back_at + 0.5)
    fig["5xx_after_recovery"] = sum(1 for s in after if s is None or s >= 500)
    _settle(platform, ledger, fig, tag)
    _assert_invariants(fig, ledger)


def test_writes_survive_connections_cut_every_half_second(
    make_platform: Callable[..., Platform], figure: Callable[..., Figure]
) -> None:
    """X5: ``pg_terminate_backend`` on a random backend of the web's database every 0.5 s."""
    fig = figure("X5.backend_kill", writers=WRITERS, kills=0, recovery_s=None)
    platform = make_platform()
    _, base = platform.start_web()
    ledger = Ledger()
    tag = "x-kill-"
    writers = _start_writers(base, platform.token(), ledger, tag)
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.5):
            fig["kills"] += platform.pg.terminate_backends(platform.dbname, limit=1)

    killer = threading.Thread(target=chaos, daemon=True)
    try:
        wait_until(lambda: len(ledger.acked_centers) >= 10, timeout=60, what="warm-up writes")
        killer.start()
        time.sleep(6.0)
        stop.set()
        killer.join()
        back_at = time.monotonic()
        first = wait_until(
            lambda: ledger.first_success_after(back_at), timeout=30, what="first success"
        )
        fig["recovery_s"] = rounded(first - back_at)
        time.sleep(2.0)
    finally:
        stop.set()
        _stop(writers)
    after = ledger.statuses_between(back_at + 0.5)
    fig["5xx_after_recovery"] = sum(1 for s in after if s is None or s >= 500)
    _settle(platform, ledger, fig, tag)
    assert fig["kills"] > 0
    _assert_invariants(fig, ledger)


def test_readiness_and_writes_answer_503_while_the_database_is_down(
    make_platform: Callable[..., Platform],
) -> None:
    """The probe and the API tell the truth while PostgreSQL is stopped, and recover after."""
    platform = make_platform()
    _, base = platform.start_web(workers=1)
    token = platform.token()
    assert http_status(f"{base}/readyz") == 200
    platform.pg.stop("fast")
    try:
        assert http_status(f"{base}/readyz") == 503
        answers: list[Any] = [
            http_json("GET", f"{base}/api/v1/centers/", token=token),
            http_json("POST", f"{base}/api/v1/centers/", token=token, body={"name": "n"}),
            http_json("GET", f"{base}/api/v1/hubs/"),
        ]
        for status, body, headers in answers:
            assert status == 503, body
            assert headers.get("Retry-After") == "5"
            assert body == {"detail": "The database is unavailable; retry later."}
        assert http_status(f"{base}/healthz") == 200  # alive, just not ready
    finally:
        platform.pg.start()
    assert wait_until(lambda: http_status(f"{base}/readyz") == 200, timeout=20, what="ready")
    assert http_json("GET", f"{base}/api/v1/hubs/")[0] == 200
