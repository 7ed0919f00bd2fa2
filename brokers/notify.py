"""PostgreSQL notifications in one broker process: one listening connection, many waiters.

The database sends them from the transaction that writes (migration 0006's triggers), at its
commit: ``broker_events`` (payload: a booking id) when a booking event is recorded, and
``broker_pools`` when pools, centers or what the placement snapshot holds change. One thread per
process LISTENs on its own connection and hands each notification on:

- ``broker_events`` wakes the WatchBooking streams of that booking (:func:`subscribe`), which
  then read the new events; nothing polls;
- ``broker_pools`` hands the changed ids to the placement snapshot
  (``brokers.placement.catalog.changed``), which a second thread refreshes within moments.

When the listening connection breaks, the thread reconnects (0.5 s apart) and then wakes every
stream and reloads the snapshot, since notifications sent meanwhile are lost. PostgreSQL only;
:func:`running` says whether a listener serves this process (WatchBooking polls otherwise).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.db import connection

logger = logging.getLogger(__name__)

EVENTS = "broker_events"
POOLS = "broker_pools"
RECONNECT_SECONDS = 0.5

Waker = Callable[[], None]

_lock = threading.Lock()
_waiters: dict[int, set[Waker]] = defaultdict(set)
_listener: Listener | None = None


def subscribe(booking_id: int, wake: Waker) -> Callable[[], None]:
    """Call ``wake`` (from the listener's thread: it must not block) whenever an event of the
    booking commits; returns the function that unsubscribes."""
    with _lock:
        _waiters[booking_id].add(wake)

    def unsubscribe() -> None:
        with _lock:
            waiting = _waiters.get(booking_id)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    del _waiters[booking_id]

    return unsubscribe


def _wake(booking_id: int | None) -> None:
    with _lock:
        if booking_id is None:
            wakers = [w for ws in _waiters.values() for w in ws]
        else:
            wakers = list(_waiters.get(booking_id, ()))
    for wake in wakers:
        try:
            wake()
        except Exception:  # a waiter that went away must not stop the others
            logger.exception("waking a booking watcher failed")


def running() -> bool:
    listener = _listener
    return listener is not None and listener.listening.is_set()


class Listener(threading.Thread):
    """The process's listening connection (start with :func:`start`)."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(name="pg-listener", daemon=True)
        self.params = params
        self.stopping = threading.Event()
        self.listening = threading.Event()
        self.conn: Any = None

    def run(self) -> None:
        import psycopg

        from brokers.placement import catalog

        first = True
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**self.params, autocommit=True) as conn:
                    self.conn = conn
                    conn.execute(f"LISTEN {EVENTS}")
                    conn.execute(f"LISTEN {POOLS}")
                    self.listening.set()
                    if not first:  # what was sent while we were away is lost
                        _wake(None)
                        catalog.changed("all")
                    first = False
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.channel == EVENTS:
                                _wake(int(note.payload))
                            elif note.channel == POOLS:
                                catalog.changed(note.payload)
            except Exception as exc:
                self.listening.clear()
                if self.stopping.is_set():
                    break
                logger.warning("notification listener: %s; reconnecting", exc)
                self.stopping.wait(RECONNECT_SECONDS)
        self.listening.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def _connect_params() -> dict[str, Any]:
    settings = connection.settings_dict
    params = {
        "dbname": settings["NAME"],
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "host": settings.get("HOST") or None,
        "port": settings.get("PORT") or None,
    }
    return {k: v for k, v in params.items() if v not in (None, "")}


def start() -> Listener | None:
    """Start this process's listener (PostgreSQL only; once per process, after any fork)."""
    global _listener
    if connection.vendor != "postgresql":
        return None
    with _lock:
        if _listener is not None and _listener.is_alive():
            return _listener
        _listener = Listener(_connect_params())
    _listener.start()
    _listener.listening.wait(5)
    from brokers.placement import catalog

    catalog.start_refresher()
    return _listener


def stop() -> None:
    """Stop the listener (a stopping server; tests)."""
    global _listener
    with _lock:
        listener, _listener = _listener, None
    if listener is not None:
        listener.stop()
    from brokers.placement import catalog

    catalog.stop_refresher()
