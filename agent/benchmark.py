"""Running a benchmark challenge on the agent: every device's chain at once, commitments as they
come, products kept for the verifier to open.

A :class:`Backend` computes one device's chain (``agent.backends`` for numpy and torch,
``agent.simulation`` for simulated centers) and reports each step through a :class:`StepSink`:
``commit`` hashes the product, keeps it, and queues the commitment for the stream. The servicer
drains the queue while the device threads run, so a commitment leaves the agent as soon as its
step is done; the verifier's clock stops at the last one. Products stay in the
:class:`ChallengeStore` until the verifier opens them (or ``ttl`` seconds pass).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from agent.challenge import Matrix, digest
from agent.config import PoolConfig
from agent.errors import FailedPrecondition, InvalidArgument, NotFound

# How long an answered challenge's products are kept for OpenBenchmark.
STORE_TTL_SECONDS = 300.0
# How long OpenBenchmark waits for the chains of its challenge to end (an honest agent's end a
# moment after their last commitment).
OPEN_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Challenge:
    """A benchmark challenge as the domain sees it (see ``RunBenchmarkRequest``)."""

    challenge_id: str
    n: int
    precision: str
    steps: int
    devices: tuple[tuple[int, int], ...]  # (device index, seed)
    nonce: bytes = b""
    inner: int = 1  # chained products behind each commitment


@dataclass(frozen=True)
class Commitment:
    """A step's commitment, as streamed."""

    device: int
    step: int
    digest: bytes


@dataclass(frozen=True)
class DeviceReport:
    """What the agent says about a device once its chain is done (evidence only)."""

    device: int
    description: str
    attestation: bytes = b""
    attestation_format: str = ""


@dataclass
class StepSink:
    """Where one device's chain reports its steps."""

    challenge: Challenge
    device: int
    seed: int
    started: float  # time.perf_counter() when the request arrived
    peers: int  # devices in the challenge
    _events: queue.Queue[Commitment | DeviceReport | BaseException | None] = field(repr=False)
    _products: dict[tuple[int, int], Matrix] = field(repr=False)

    def commit(self, step: int, product: Matrix) -> bytes:
        """Keep ``product`` as step ``step`` and send its digest; the digest, which the next
        input depends on (``agent.challenge.next_input``)."""
        self.keep(step, product)
        value = self.digest_of(step, product)
        self.commit_digest(step, value)
        return value

    def keep(self, step: int, product: Matrix) -> None:
        """Keep ``product`` for opening without sending anything."""
        self._products[(self.device, step)] = product

    def commit_digest(self, step: int, value: bytes) -> None:
        """Send a commitment as given (the backends use :meth:`commit`)."""
        self._events.put(Commitment(self.device, step, value))

    def digest_of(self, step: int, product: Matrix) -> bytes:
        """The commitment of ``product`` at ``step`` of this device."""
        return digest(
            product,
            self.challenge.precision,
            challenge_id=self.challenge.challenge_id,
            device=self.device,
            step=step,
        )


class Backend(Protocol):
    """Computes one device's chain of a challenge."""

    def run_chain(self, sink: StepSink, pool: PoolConfig) -> DeviceReport: ...


@dataclass
class _Entry:
    products: dict[tuple[int, int], Matrix]
    n: int
    precision: str
    done: threading.Event
    expires: float


class ChallengeStore:
    """Products of answered challenges, by challenge id, until opened or expired."""

    def __init__(self, ttl: float = STORE_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def create(self, challenge: Challenge) -> dict[tuple[int, int], Matrix]:
        """Room for a new challenge's products; InvalidArgument if the id is taken."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.expires < now]:
                del self._entries[key]
            if challenge.challenge_id in self._entries:
                raise InvalidArgument("challenge_id", "already used")
            entry = _Entry({}, challenge.n, challenge.precision, threading.Event(), 0.0)
            entry.expires = now + self.ttl
            self._entries[challenge.challenge_id] = entry
            return entry.products

    def finish(self, challenge_id: str) -> None:
        """Mark a challenge answered: its products may be opened from now on."""
        with self._lock:
            entry = self._entries.get(challenge_id)
            if entry is not None:
                entry.done.set()
                entry.expires = time.monotonic() + self.ttl

    def get(
        self, challenge_id: str, device: int, step: int, *, wait: float = OPEN_WAIT_SECONDS
    ) -> tuple[Matrix, str]:
        """A kept product and its precision, once every chain of the challenge has ended (waiting
        up to ``wait`` seconds); NotFound or FailedPrecondition otherwise."""
        with self._lock:
            entry = self._entries.get(challenge_id)
        if entry is None or entry.expires < time.monotonic():
            raise NotFound(f"no answered challenge {challenge_id!r}")
        if not entry.done.wait(wait):
            raise ChallengeRunning(challenge_id)
        product = entry.products.get((device, step))
        if product is None:
            raise NotFound(
                f"challenge {challenge_id!r} has no product of device {device} step {step}"
            )
        return product, entry.precision


class ChallengeRunning(FailedPrecondition):
    """OpenBenchmark on a challenge whose chains still run."""

    def __init__(self, challenge_id: str) -> None:
        super().__init__(f"challenge {challenge_id!r} is still running")


def run_challenge(
    challenge: Challenge, pool: PoolConfig, backend: Backend, store: ChallengeStore
) -> Iterator[Commitment | DeviceReport]:
    """Run every device's chain at once; yield commitments as they come, then the reports.

    A device thread that fails makes the whole challenge fail with its error.
    """
    started = time.perf_counter()
    events: queue.Queue[Commitment | DeviceReport | BaseException | None] = queue.Queue()
    products = store.create(challenge)
    left = [len(challenge.devices)]
    left_lock = threading.Lock()

    def work(device: int, seed: int) -> None:
        sink = StepSink(challenge, device, seed, started, len(challenge.devices), events, products)
        try:
            events.put(backend.run_chain(sink, pool))
        except BaseException as exc:  # reported to the stream, never lost in the thread
            events.put(exc)
        finally:
            with left_lock:
                left[0] -= 1
                if left[0] == 0:  # the last chain ended: the products may be opened
                    store.finish(challenge.challenge_id)
            events.put(None)

    threads = [
        threading.Thread(target=work, args=(device, seed), name=f"chain-{device}", daemon=True)
        for device, seed in challenge.devices
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    reports: list[DeviceReport] = []
    while running:
        event = events.get()
        if event is None:
            running -= 1
        elif isinstance(event, BaseException):
            raise event
        elif isinstance(event, DeviceReport):
            reports.append(event)
        else:
            yield event
    yield from sorted(reports, key=lambda r: r.device)
