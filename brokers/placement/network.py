"""Links between hubs, for data-transfer time: loaded once per process and refreshed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from registry.models import Hub, HubLink

# Inside one hub data moves over the metro network; without a link row we assume a slow path.
INTRA_HUB_GBPS = 400.0
INTRA_HUB_RTT_MS = 1.0
UNKNOWN_LINK_GBPS = 10.0
UNKNOWN_LINK_RTT_MS = 60.0
REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class Network:
    """Latency (ms) and bandwidth (Gb/s) between hub codes, symmetric; ``hubs``: every hub code
    (so that "the hubs within reach" can be listed for the candidate query)."""

    links: dict[tuple[str, str], tuple[float, float]]
    hubs: frozenset[str] = frozenset()

    def _link(self, a: str, b: str) -> tuple[float, float]:
        if a == b:
            return INTRA_HUB_RTT_MS, INTRA_HUB_GBPS
        return (
            self.links.get((a, b))
            or self.links.get((b, a))
            or (
                UNKNOWN_LINK_RTT_MS,
                UNKNOWN_LINK_GBPS,
            )
        )

    def latency_ms(self, a: str, b: str) -> float:
        return self._link(a, b)[0]

    def transfer_seconds(self, source: str, dest: str, gigabytes: float) -> float:
        """Time to move ``gigabytes`` from hub ``source`` to hub ``dest``: one round trip plus
        the size over the link's bandwidth (bytes to bits)."""
        if not source or gigabytes <= 0:
            return 0.0
        rtt, gbps = self._link(source, dest)
        return rtt / 1000 + gigabytes * 8 / gbps


_lock = threading.Lock()
_cache: tuple[float, Network] | None = None


def current_network() -> Network:
    """The hub links, read from the database at most once a minute per process."""
    global _cache
    with _lock:
        if _cache is not None and time.monotonic() - _cache[0] < REFRESH_SECONDS:
            return _cache[1]
    links = {
        (a, b): (lat, bw)
        for a, b, lat, bw in HubLink.objects.values_list(
            "a__code", "b__code", "latency_ms", "bandwidth_gbps"
        )
    }
    hubs = frozenset(Hub.objects.values_list("code", flat=True))
    network = Network(links, hubs | {code for pair in links for code in pair})
    with _lock:
        _cache = (time.monotonic(), network)
    return network
