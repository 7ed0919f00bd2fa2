"""How the agent computes a benchmark: for real on the host, or as a simulated center would.

Timing model of a simulated center (the platform's verifier relies on it): an accelerator with
declared throughput T TFLOPS is emulated at ``T * time_scale * speed_factor`` TFLOPS, and a
challenge runs on one accelerator, so it takes

    simulated_seconds = 2 * n^3 * repetitions / (T * 1e12 * time_scale * speed_factor)

The honest simulation really multiplies the matrices with numpy, then sleeps the remainder so
that the compute phase lasts at least ``simulated_seconds``, and reports the time it really took.
The cheating modes depart from that in one way each (see ``SimulationMode``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.challenge import Matrix, flops, matrices, multiply
from agent.config import PoolConfig, SimulationConfig, SimulationMode
from agent.errors import InvalidArgument, Unavailable
from agent.inventory import cpu_description

# cheat-timing claims this fraction of the time it really spent.
CHEAT_TIMING_FRACTION = 0.1
# cheat-partial perturbs this fraction of the product's rows (at least one row).
CHEAT_PARTIAL_ROW_FRACTION = 0.01
# RPCs that fail in "flaky" mode before they start working.
FLAKY_METHODS = ("GetInventory", "RunBenchmark")


@dataclass(frozen=True)
class Challenge:
    """A benchmark challenge as the domain sees it (see ``RunBenchmarkRequest``)."""

    seed: int
    n: int
    dtype: str
    repetitions: int
    challenge_id: str = ""


@dataclass(frozen=True)
class BenchmarkResult:
    """What the agent sends back: the product, the time it claims, the device it names."""

    product: Matrix
    compute_seconds: float
    device: str


class Benchmarker(Protocol):
    """Computes a challenge on one accelerator of a pool."""

    def run(self, challenge: Challenge, pool: PoolConfig) -> BenchmarkResult: ...


class HostBenchmarker:
    """A real agent: multiplies with numpy on the host and reports the measured time.

    A production agent on GPUs would run the multiplication on one device (torch); numpy keeps
    this implementation dependency-free and exact.
    """

    def run(self, challenge: Challenge, pool: PoolConfig) -> BenchmarkResult:
        a, b = matrices(challenge.seed, challenge.n, challenge.dtype)
        started = time.perf_counter()
        product = multiply(a, b, challenge.repetitions)
        return BenchmarkResult(
            product=product,
            compute_seconds=time.perf_counter() - started,
            device=f"numpy on {cpu_description()}",
        )


def simulated_seconds(
    n: int, repetitions: int, declared_tflops: float, time_scale: float, speed_factor: float
) -> float:
    """Time a simulated accelerator needs for a challenge (see the module docstring)."""
    if declared_tflops <= 0:
        raise InvalidArgument("pool_key", "the pool has no declared throughput to emulate")
    return flops(n, repetitions) / (declared_tflops * 1e12 * time_scale * speed_factor)


class SimulatedBenchmarker:
    """A simulated center computing a challenge according to its mode."""

    def __init__(
        self, simulation: SimulationConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.simulation = simulation
        self._sleep = sleep

    def run(self, challenge: Challenge, pool: PoolConfig) -> BenchmarkResult:
        mode = self.simulation.mode
        target = simulated_seconds(
            challenge.n,
            challenge.repetitions,
            pool.declared_tflops_per_accelerator,
            self.simulation.time_scale,
            self.simulation.effective_speed_factor,
        )
        a, b = matrices(challenge.seed, challenge.n, challenge.dtype)
        started = time.perf_counter()
        if mode is SimulationMode.CHEAT_WRONG:
            product = _unrelated_matrix(challenge)
        else:
            product = multiply(a, b, challenge.repetitions)
        if mode is SimulationMode.CHEAT_PARTIAL:
            _perturb_rows(product, challenge.seed)
        # Even the cheaters take the declared time: the cheat is in the answer, not the delay.
        remaining = target - (time.perf_counter() - started)
        if remaining > 0:
            self._sleep(remaining)
        elapsed = time.perf_counter() - started
        if mode is SimulationMode.CHEAT_TIMING:
            elapsed *= CHEAT_TIMING_FRACTION
        return BenchmarkResult(
            product=product,
            compute_seconds=elapsed,
            device=f"simulated {pool.accelerator_model} (1 accelerator)",
        )


def _unrelated_matrix(challenge: Challenge) -> Matrix:
    """A random matrix with the statistics of a real product but no relation to A and B."""
    rng = np.random.default_rng([challenge.seed, 0xC4EA7])
    scale = np.sqrt(challenge.n)  # entries of A @ B have standard deviation sqrt(n)
    wrong: Matrix = (rng.standard_normal((challenge.n, challenge.n)) * scale).astype(
        challenge.dtype
    )
    return wrong


def _perturb_rows(product: Matrix, seed: int) -> None:
    """Shift about 1 % of the rows by one standard deviation of an entry (in place)."""
    n = product.shape[0]
    count = max(1, round(n * CHEAT_PARTIAL_ROW_FRACTION))
    rows = np.random.default_rng([seed, 0x9A27]).choice(n, size=count, replace=False)
    product[rows] += np.sqrt(n)


class CallFaults:
    """Deterministic transient failures for the "flaky" mode.

    The first ``failures`` calls of each method in ``FLAKY_METHODS`` raise Unavailable; later
    calls succeed. Counted per method and per agent, under a lock because gRPC serves calls on
    many threads.
    """

    def __init__(self, failures: int) -> None:
        self._remaining = dict.fromkeys(FLAKY_METHODS, failures)
        self._lock = threading.Lock()

    def check(self, method: str) -> None:
        """Raise Unavailable if this call of ``method`` is one that must fail."""
        with self._lock:
            left = self._remaining.get(method, 0)
            if left <= 0:
                return
            self._remaining[method] = left - 1
        raise Unavailable(f"simulated transient failure of {method} ({left - 1} more to come)")


class NoFaults:
    """Every call goes through (all modes but "flaky")."""

    def check(self, method: str) -> None:
        """Never fails."""


def benchmarker_for(simulation: SimulationConfig | None) -> Benchmarker:
    """The benchmarker of a real agent (None) or of a simulated one."""
    if simulation is None:
        return HostBenchmarker()
    return SimulatedBenchmarker(simulation)


def faults_for(simulation: SimulationConfig | None) -> CallFaults | NoFaults:
    """Fault injection for flaky simulations; none otherwise."""
    if simulation is not None and simulation.mode is SimulationMode.FLAKY:
        return CallFaults(simulation.flaky_failures)
    return NoFaults()
