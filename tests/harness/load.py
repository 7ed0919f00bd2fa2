"""Load generators shared by the fault tests and ``bench/``: REST writers with honest ledgers.

A writer records every request it issues (time, status) and every object it was told exists
(``acked``). After the fault, the test compares the ledger with the database: an acked object
missing is *lost*, a logical operation with two rows is *doubled*. A writer thread that dies
records its exception in ``Ledger.errors`` (otherwise only a warning), and the tests assert
there is none.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from tests.harness.platform import http_json

CENTER_BODY = {
    "cluster": "ZW",
    "latitude": 37.5,
    "longitude": 105.2,
    "pue": 1.15,
    "green_power_share": 0.8,
    "agent_endpoint": "127.0.0.1:50061",
}


def pool_body(center_id: str, name: str) -> dict[str, Any]:
    return {
        "center": center_id,
        "name": name,
        "accelerator": "nvidia-h100-sxm",
        "accelerators_per_node": 8,
        "nodes": 2,
        "price_per_accelerator_hour": "12.50",
        "currency": "CNY",
        "declared_tflops_per_accelerator": 989.4,
        "traits": ["nvlink"],
    }


@dataclass
class Ledger:
    """What one load generator did and was told."""

    requests: list[tuple[float, int | None]] = field(default_factory=list)
    acked_centers: dict[str, str] = field(default_factory=dict)  # name -> national id
    acked_pools: dict[str, str] = field(default_factory=dict)  # name -> national id
    attempted: int = 0  # logical operations (a retry of the same name is not a new one)
    resolved_by_lookup: int = 0  # a retry said "exists": the first try had committed
    unresolved: int = 0
    errors: list[str] = field(default_factory=list)  # exceptions that ended a writer thread
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, status: int | None) -> None:
        with self.lock:
            self.requests.append((time.monotonic(), status))

    def statuses_between(self, start: float, end: float = float("inf")) -> list[int | None]:
        with self.lock:
            return [s for t, s in self.requests if start <= t < end]

    def first_success_after(self, moment: float) -> float | None:
        with self.lock:
            times = [t for t, s in self.requests if t >= moment and s is not None and s < 300]
        return min(times) if times else None


class RestWriter(threading.Thread):
    """Registers centers, and one pool in each, through the REST API, until told to stop.

    A 503 or a lost connection is retried with the SAME name: the name is unique per operator,
    so a retry of a request that had in fact committed gets a 400 on the name, and the writer
    settles it by looking the name up. Nothing is ever created twice by a retry.
    """

    RETRY_WINDOW = 30.0  # seconds a writer keeps retrying one name (covers a crash recovery)
    RETRY_DELAY = 0.15

    def __init__(self, base_url: str, token: str, ledger: Ledger, tag: str) -> None:
        super().__init__(daemon=True)
        self.base = base_url
        self.token = token
        self.ledger = ledger
        self.tag = tag
        self.stop_event = threading.Event()

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int | None, Any]:
        status, data, _ = http_json(method, self.base + path, token=self.token, body=body)
        self.ledger.note(status)
        return status, data

    def _lookup(self, path: str, name: str) -> str | None:
        deadline = time.monotonic() + self.RETRY_WINDOW
        while time.monotonic() < deadline:
            status, data = self._call("GET", f"{path}?search={name}&limit=5")
            if status == 200:
                for row in data["results"]:
                    if row["name"] == name:
                        return str(row["national_id"])
                return None
            time.sleep(self.RETRY_DELAY)
        return None

    def _create(self, path: str, body: dict[str, Any]) -> str | None:
        """Create with retries on the same name; the national id, or None if unresolved."""
        deadline = time.monotonic() + self.RETRY_WINDOW
        attempt = -1
        while time.monotonic() < deadline:
            attempt += 1
            status, data = self._call("POST", path, body)
            if status == 201:
                return str(data["national_id"])
            if status == 400 and attempt > 0 and "name" in str(data):
                found = self._lookup(path, body["name"])
                if found:
                    with self.ledger.lock:
                        self.ledger.resolved_by_lookup += 1
                    return found
            if status is not None and status < 500 and status != 400:
                break
            if status == 400 and attempt == 0:
                break  # a genuine validation error on the first try: a bug in the writer
            time.sleep(self.RETRY_DELAY)
        with self.ledger.lock:
            self.ledger.unresolved += 1
        return None

    def run(self) -> None:
        try:
            self._write()
        except BaseException:
            with self.ledger.lock:
                self.ledger.errors.append(f"writer {self.tag}: {traceback.format_exc()}")

    def _write(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            i += 1
            name = f"{self.tag}-{i:05d}"
            with self.ledger.lock:
                self.ledger.attempted += 1
            center = self._create("/api/v1/centers/", {**CENTER_BODY, "name": name})
            if center is None:
                continue
            with self.ledger.lock:
                self.ledger.acked_centers[name] = center
                self.ledger.attempted += 1
            pool = self._create("/api/v1/pools/", pool_body(center, f"{name}-p"))
            if pool is not None:
                with self.ledger.lock:
                    self.ledger.acked_pools[f"{name}-p"] = pool

    def stop(self) -> None:
        self.stop_event.set()
