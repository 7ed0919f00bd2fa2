"""The oversell sampler (RELIABILITY 1.7 and B5), on the brokers' tables.

A thread runs the sweep every 100 ms in its own connection (its own snapshot), during the
whole fault run, because a check of the final state misses transient oversells once bookings
are cancelled. The SQL is written here again, not imported from ``brokers.ledger``: the checker
must not share a bug with the code it checks. It reads allocations of reserving bookings
(cancelled rows are kept, so history stays auditable) and the slot counters as a second view.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

# Statuses in which a booking holds capacity (brokers.choices.RESERVING_STATUSES).
RESERVING = ("held", "confirmed", "dispatching", "running")

ALLOCATION_SWEEP = """
WITH live AS (
    SELECT a.pool_id, a.start, a."end", a.accelerators
    FROM brokers_allocation a JOIN brokers_booking b ON b.id = a.booking_id
    WHERE b.status = ANY(%(reserving)s)
),
e AS (
    SELECT pool_id, start AS t, accelerators AS d FROM live
    UNION ALL
    SELECT pool_id, "end" AS t, -accelerators AS d FROM live
),
s AS (SELECT pool_id, t, sum(d) AS d FROM e GROUP BY pool_id, t),  -- ends and starts cancel first
r AS (SELECT pool_id, sum(d) OVER (PARTITION BY pool_id ORDER BY t) AS used FROM s)
SELECT r.pool_id, max(r.used) - p.accelerators AS over
FROM r JOIN registry_pool p ON p.id = r.pool_id
GROUP BY r.pool_id, p.accelerators
HAVING max(r.used) > p.accelerators
"""

SLOT_SWEEP = """
SELECT pool_id, max(reserved - capacity) FROM brokers_poolslot
WHERE reserved > capacity GROUP BY pool_id
"""


def sweep(conn: psycopg.Connection) -> dict[int, int]:
    """``{pool_id: excess}`` over both views (allocations, slot counters)."""
    over: dict[int, int] = {}
    for sql, params in ((ALLOCATION_SWEEP, {"reserving": list(RESERVING)}), (SLOT_SWEEP, {})):
        for pool_id, excess in conn.execute(sql, params).fetchall():
            over[pool_id] = max(over.get(pool_id, 0), int(excess))
    return over


class OversellSampler(threading.Thread):
    """Samples every ``interval`` s until ``stop()``; survives database restarts (reconnects)."""

    def __init__(self, connect: Any, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.connect = connect
        self.interval = interval
        self.samples = 0
        self.sample_errors = 0
        self.oversold_pools: dict[int, int] = {}
        self._halt = threading.Event()

    @property
    def max_over(self) -> int:
        return max(self.oversold_pools.values(), default=0)

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._halt.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.connect()
                for pool_id, excess in sweep(conn).items():
                    self.oversold_pools[pool_id] = max(self.oversold_pools.get(pool_id, 0), excess)
                self.samples += 1
            except psycopg.Error:
                self.sample_errors += 1  # the database is down: sample again when it is back
                if conn is not None:
                    conn.close()
                conn = None
            self._halt.wait(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def figure(self) -> dict[str, int]:
        return {
            "samples": self.samples,
            "sample_errors": self.sample_errors,
            "oversold": len(self.oversold_pools),
            "max_over": self.max_over,
        }
