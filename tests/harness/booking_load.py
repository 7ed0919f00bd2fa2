"""A booking storm over gRPC with an honest client ledger (idempotency keys, retries, cancels).

Each client thread books 2 or 4 A100s on a few small pools, over windows that overlap, and
cancels some of its bookings (churn, so capacity frees up and transient oversells would show).
A request that fails with a retryable code (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, or an
INTERNAL from a dying process) is retried with the SAME idempotency key, on the next broker
target: a booking that committed before the failure is returned, never made twice.

A client thread that dies (an unexpected status, a bug in the client) records its exception in
``BookingLedger.errors``: an exception inside a thread is otherwise only a warning, and the test
would pass with a dead client. ``Storm`` asserts the list is empty.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import traceback
from dataclasses import dataclass, field

import grpc

from brokers.client.client import BrokerClient, workload_spec

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


@dataclass
class BookingLedger:
    """What the storm's clients did and were told."""

    attempted: int = 0  # logical bookings (idempotency keys)
    acked: dict[str, set[str]] = field(default_factory=dict)  # key -> booking ids answered
    rejected: int = 0  # RESOURCE_EXHAUSTED: no capacity (a valid answer)
    cancelled: set[str] = field(default_factory=set)  # booking ids the clients cancelled
    retries: int = 0
    unresolved: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    answers: list[float] = field(default_factory=list)  # times of valid answers (ok or exhausted)
    errors: list[str] = field(default_factory=list)  # exceptions that ended a client thread
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self) -> None:
        with self.lock:
            self.answers.append(time.monotonic())

    def first_answer_after(self, moment: float) -> float | None:
        with self.lock:
            times = [t for t in self.answers if t >= moment]
        return min(times) if times else None


class BookingClient(threading.Thread):
    """One AI firm's program booking in a loop against ``targets`` (host:port), until stopped."""

    RETRIES = 40
    RETRY_DELAY = 0.2

    def __init__(
        self,
        n: int,
        targets: list[str],
        token: str,
        pools: list[str],
        start: dt.datetime,
        ledger: BookingLedger,
        cancel_share: float = 0.5,
    ) -> None:
        super().__init__(daemon=True)
        self.n = n
        self.targets = targets
        self.token = token
        self.pools = pools
        self.start_at = start
        self.ledger = ledger
        self.cancel_share = cancel_share
        self.rng = random.Random(n)
        self.stop_event = threading.Event()
        self.clients = [BrokerClient(t, token, timeout=5) for t in targets]
        self.current = n % len(targets)

    def _client(self) -> BrokerClient:
        return self.clients[self.current]

    def _fail_over(self) -> None:
        self.current = (self.current + 1) % len(self.clients)

    def _code(self, code: grpc.StatusCode) -> None:
        with self.ledger.lock:
            self.ledger.codes[code.name] = self.ledger.codes.get(code.name, 0) + 1

    def _book(self, key: str) -> str | None:
        count = self.rng.choice([2, 4])
        spec = workload_spec(
            accelerator_model="nvidia-a100-80g",
            count=count,
            # Windows over two days: pools fill slowly, so most requests commit a booking.
            earliest_start=self.start_at + dt.timedelta(minutes=self.rng.randrange(0, 2880, 30)),
            duration_seconds=self.rng.choice([3600, 5400, 7200]),
        )
        option = [(self.rng.choice(self.pools), count)] if self.rng.random() < 0.5 else []
        for attempt in range(self.RETRIES):
            try:
                booking = self._client().book(spec, idempotency_key=key, option=option)
            except grpc.RpcError as exc:
                code = exc.code()
                self._code(code)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.ledger.answered()
                    with self.ledger.lock:
                        self.ledger.rejected += 1
                    return None
                if code not in RETRYABLE:
                    raise AssertionError(f"unexpected {code.name}: {exc.details()}") from exc
                with self.ledger.lock:
                    self.ledger.retries += 1
                self._fail_over()
                time.sleep(self.RETRY_DELAY * min(attempt + 1, 3))
                continue
            self.ledger.answered()
            with self.ledger.lock:
                self.ledger.acked.setdefault(key, set()).add(booking.booking_id)
            return str(booking.booking_id)
        with self.ledger.lock:
            self.ledger.unresolved += 1
        return None

    def _cancel(self, booking_id: str) -> None:
        for attempt in range(self.RETRIES):
            try:
                self._client().cancel(booking_id, reason="storm churn")
            except grpc.RpcError as exc:
                self._code(exc.code())
                if exc.code() not in RETRYABLE:
                    raise AssertionError(f"cancel: {exc.code().name}: {exc.details()}") from exc
                self._fail_over()
                time.sleep(self.RETRY_DELAY * min(attempt + 1, 3))
                continue
            with self.ledger.lock:
                self.ledger.cancelled.add(booking_id)
            return
        with self.ledger.lock:
            self.ledger.unresolved += 1

    def run(self) -> None:
        j = 0
        try:
            while not self.stop_event.is_set():
                j += 1
                key = f"storm-{self.n}-{j}"
                with self.ledger.lock:
                    self.ledger.attempted += 1
                booking_id = self._book(key)
                if booking_id and self.rng.random() < self.cancel_share:
                    self._cancel(booking_id)
        except BaseException:
            with self.ledger.lock:
                self.ledger.errors.append(f"client {self.n}: {traceback.format_exc()}")
        finally:
            for client in self.clients:
                client.channel.close()

    def stop(self) -> None:
        self.stop_event.set()
