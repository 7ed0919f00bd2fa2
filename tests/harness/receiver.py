"""A real webhook receiver on loopback that counts deliveries by event id."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from typing import Any


class WebhookReceiver:
    """Answers 200 after ``delay`` seconds; counts every POST by ``X-Interconnect-Delivery``.

    The delay keeps each delivery in flight long enough for a kill to land mid-task. A count
    above 1 for an event id is a *redelivery*: at-least-once delivery may legitimately re-send
    after a worker died between the HTTP call and the database update.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self.times: list[float] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event_id = self.headers.get("X-Interconnect-Delivery", "?")
                with receiver.lock:
                    receiver.counts[event_id] += 1
                    receiver.times.append(time.monotonic())
                time.sleep(receiver.delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> set[str]:
        with self.lock:
            return set(self.counts)

    def redelivered(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.counts.values() if n > 1)

    def first_after(self, moment: float) -> float | None:
        """When the first delivery (new or repeated) arrived after ``moment``."""
        with self.lock:
            times = [t for t in self.times if t >= moment]
        return min(times) if times else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
