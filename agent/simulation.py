"""Simulated centers: honest, slow, flaky, and one mode per cheat the verifier must catch.

Timing model (the platform's verifier relies on it): a simulated accelerator with declared
throughput T TFLOPS runs at ``T * time_scale * speed_factor`` TFLOPS, so step ``t`` of its chain
is due ``t * 2 n^3 / (T * 1e12 * time_scale * speed_factor)`` seconds after the request arrived.
The simulation really computes every product with numpy (so the verifier's checks see real
arithmetic), commits it, and sleeps until the step is due. Devices of one challenge run at once,
each at that speed, unless the mode says otherwise.

Each cheating mode departs from honesty in one way (``SimulationMode`` lists them); every one is
caught by a named check of the verifier (README, "Threat model").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from agent.benchmark import Backend, DeviceReport, StepSink
from agent.challenge import (
    Matrix,
    flops,
    inputs,
    link_signs,
    multiply,
    next_input,
    precision,
)
from agent.challenge import step as chain_step
from agent.config import PoolConfig, SimulationConfig, SimulationMode
from agent.errors import InvalidArgument, Unavailable

# cheat-partial perturbs this fraction of each product's rows (at least one row).
CHEAT_PARTIAL_ROW_FRACTION = 0.01
# cheat-rtt: seconds added to every health check answer (a padded round trip).
CHEAT_RTT_SECONDS = 0.3
# cheat-rtt computes at this share of the declared speed, hoping the padding hides it.
CHEAT_RTT_SPEED = 0.6
# cheat-lowrank: rank n / 4, about half the flops of the chain (4 rank n^2 a link, against 2 n^3).
CHEAT_LOWRANK_RANK_PERCENT = 25
# RPCs that fail in "flaky" mode before they start working: those the verifier calls before it
# sends the challenge (an agent restarting). A failure of the challenge itself fails the run.
FLAKY_METHODS = ("GetInventory",)


def step_seconds(n: int, declared_tflops: float, time_scale: float, speed_factor: float) -> float:
    """Time a simulated accelerator needs for one product (see the module docstring)."""
    if declared_tflops <= 0:
        raise InvalidArgument("pool_key", "the pool has no declared throughput to emulate")
    return flops(n) / (declared_tflops * 1e12 * time_scale * speed_factor)


class SimulatedBackend:
    """A simulated center computing challenges according to its mode."""

    def __init__(
        self, simulation: SimulationConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.simulation = simulation
        self._sleep = sleep
        # cheat-one-device: one emulated accelerator, shared by every device of a challenge.
        self._one_device = threading.Lock()
        # cheat-replay: the chains of the first device of the first challenge, replayed.
        self._replay: list[Matrix] | None = None
        self._replay_lock = threading.Lock()

    def _wait_until(self, due: float) -> None:
        remaining = due - time.perf_counter()
        if remaining > 0:
            self._sleep(remaining)

    def run_chain(self, sink: StepSink, pool: PoolConfig) -> DeviceReport:
        mode = self.simulation.mode
        challenge = sink.challenge
        n, name, steps = challenge.n, challenge.precision, challenge.steps
        speed = self.simulation.effective_speed_factor
        if mode is SimulationMode.CHEAT_RTT:
            speed *= CHEAT_RTT_SPEED
        products = challenge.inner
        if mode is SimulationMode.CHEAT_SHORTCUT:
            products = shortcut_products(challenge.inner)  # what the shortcut really computes
        elif mode is SimulationMode.CHEAT_LOWRANK:  # ~4 rank n^2 a link against 2 n^3
            products = max(1, challenge.inner * 2 * CHEAT_LOWRANK_RANK_PERCENT // 100)
        elif mode is SimulationMode.CHEAT_FACTORED:  # L X' R: 2 products a step
            products = min(2, challenge.inner)
        per_step = products * step_seconds(
            n, pool.declared_tflops_per_accelerator, self.simulation.time_scale, speed
        )
        description = f"simulated {pool.accelerator_model} #{sink.device}"
        if mode is SimulationMode.CHEAT_TIMING:
            return self._commit_before_computing(sink, description)
        if mode is SimulationMode.CHEAT_REPLAY:
            return self._replayed(sink, per_step, description)
        x, b = inputs(sink.seed, n, name)
        factors = None
        if mode is SimulationMode.CHEAT_FACTORED and challenge.inner > 1:
            # Once per challenge (the first step's signs), reused by every step: what v2 let
            # through, since its signs were the same in every step.
            factors = step_factors(b, name, challenge.inner, _signs(sink, 1))
            self._wait_until(sink.started + challenge.inner * per_step / products)
        b_true = b  # the next input's term uses B as it is (agent.challenge.next_input)
        if mode is SimulationMode.CHEAT_PRECISION:
            # FP8 (E4M3) inputs: a quarter of the bits, twice the tensor rate on FP8 hardware.
            low = np.dtype(ml_dtypes.float8_e4m3fn)
            b = b.astype(low).astype(precision(name).input)
        due = time.perf_counter() if factors is not None else sink.started
        previous: Matrix | None = None
        for step in range(1, steps + 1):
            skipped = False
            if mode is SimulationMode.CHEAT_ONE_DEVICE:
                # One accelerator answers for all: the steps of every device take turns on it.
                with self._one_device:
                    started = time.perf_counter()
                    product = self._product(x, b, step, sink)
                    self._wait_until(started + per_step)
            elif mode is SimulationMode.CHEAT_SKIP and previous is not None and step % 2 == 0:
                product, skipped = previous.copy(), True  # skipped: the last product again
            else:
                if mode is SimulationMode.CHEAT_PRECISION:
                    x = x.astype(np.dtype(ml_dtypes.float8_e4m3fn)).astype(precision(name).input)
                product = self._product(x, b, step, sink, factors)
            previous = product
            if mode is not SimulationMode.CHEAT_ONE_DEVICE and not skipped:
                due += per_step
                self._wait_until(due)
            x = next_input(product, name, b_true, sink.commit(step, product))
        return _report(sink, description)

    def _product(
        self, x: Matrix, b: Matrix, step: int, sink: StepSink, factors: StepFactors | None = None
    ) -> Matrix:
        """The step's product as the mode computes it."""
        mode = self.simulation.mode
        name = sink.challenge.precision
        n = sink.challenge.n
        if mode is SimulationMode.CHEAT_WRONG:
            return _unrelated_matrix(sink.seed, step, n, name)
        if mode is SimulationMode.CHEAT_DEGENERATE:  # nothing computed: zero, exactly
            return np.zeros((n, n), dtype=precision(name).accumulator)
        if mode is SimulationMode.CHEAT_SHORTCUT:
            return shortcut_step(x, b, name, sink.challenge.inner)
        if factors is not None:
            return factored_step(x, factors, name)
        if mode is SimulationMode.CHEAT_LOWRANK and sink.challenge.inner > 1:
            rank = max(1, n * CHEAT_LOWRANK_RANK_PERCENT // 100)
            return lowrank_step(x, b, name, sink.challenge.inner, _signs(sink, step), rank)
        product = chain_step(x, b, name, sink.challenge.inner, _signs(sink, step))
        if mode is SimulationMode.CHEAT_PARTIAL:
            _perturb_rows(product, sink.seed + step)
        elif mode is SimulationMode.CHEAT_ONE_ENTRY and step == sink.challenge.steps:
            product[n // 2, n // 3] += 1.0
        return product

    def _commit_before_computing(self, sink: StepSink, description: str) -> DeviceReport:
        """cheat-timing, the cheat the old protocol let through: claim every step done at once,
        then compute on the host CPU at its own pace and keep the true products."""
        claimed = [os.urandom(32) for _ in range(sink.challenge.steps)]
        for step in range(1, sink.challenge.steps + 1):
            sink.commit_digest(step, claimed[step - 1])
        name = sink.challenge.precision
        x, b = inputs(sink.seed, sink.challenge.n, name)
        for step in range(1, sink.challenge.steps + 1):
            product = chain_step(x, b, name, sink.challenge.inner, _signs(sink, step))
            sink.keep(step, product)
            x = next_input(product, name, b, sink.digest_of(step, product))
        return _report(sink, description)

    def _replayed(self, sink: StepSink, per_step: float, description: str) -> DeviceReport:
        """cheat-replay: the first chain this agent ever computed, for every later answer."""
        name, n, steps = sink.challenge.precision, sink.challenge.n, sink.challenge.steps
        with self._replay_lock:
            if self._replay is None or len(self._replay) < steps or self._replay[0].shape[0] != n:
                x, b = inputs(sink.seed, n, name)
                chain = []
                for step in range(1, steps + 1):
                    product = chain_step(x, b, name, sink.challenge.inner, _signs(sink, step))
                    chain.append(product)
                    x = next_input(product, name, b, sink.digest_of(step, product))
                self._replay = chain
            chain = list(self._replay)
        due = sink.started
        for step in range(1, steps + 1):
            due += per_step
            self._wait_until(due)
            sink.commit(step, chain[step - 1].copy())
        return _report(sink, description)


# Format of the attestation a simulated device attaches: the request's nonce, device and
# challenge id, so the verifier can show where a report is bound to its challenge. Real
# hardware attaches its vendor's report instead (e.g. NVIDIA confidential computing).
SIMULATED_ATTESTATION = "simulated-nonce-echo"


def _signs(sink: StepSink, step: int) -> Matrix:
    """The link signs of a step of this device's chain (``agent.challenge.link_signs``)."""
    challenge = sink.challenge
    return link_signs(sink.seed, challenge.n, challenge.inner, challenge.precision, step=step)


@dataclass(frozen=True)
class StepFactors:
    """A composite step as the fixed linear map X -> L X' R (X' = X or X^T), its factors
    rounded to the input type: ``step_factors``."""

    left: Matrix
    right: Matrix
    transposed: bool


def link_factors(b: Matrix, inner: int, signs: Matrix) -> tuple[list[Any], list[Any], bool]:
    """A step of ``inner`` signed links without its roundings, as products of fixed factors
    (float64): its product is prod(left) X' prod(right), X' = X^T when ``transposed`` else X,
    from Y_j = s D_j (Y_{j-1} B)^T; ``right`` ends with B."""
    s = 1.0 / np.sqrt(b.shape[0])
    b64: Any = b.astype(np.float64)
    left: list[Any] = []
    right: list[Any] = []
    transposed = False
    for j in range(1, inner):
        factor = s * signs[j - 1].astype(np.float64)[:, None] * b64.T
        left, right = [factor] + [f.T for f in reversed(right)], [f.T for f in reversed(left)]
        transposed = not transposed
    return left, [*right, b64], transposed


def step_factors(b: Matrix, name: str, inner: int, signs: Matrix) -> StepFactors:
    """cheat-factored, once per challenge: the step's map X -> L X' R (``link_factors``), L and
    R multiplied out once, in about ``inner`` products, and rounded to the input type, so that
    each step is then 2 tensor-core products."""
    n = b.shape[0]
    left, right, transposed = link_factors(b, inner, signs)
    p = precision(name)
    product_left: Any = np.eye(n)
    for f in left:
        product_left = product_left @ f
    product_right: Any = np.eye(n)
    for f in right:
        product_right = product_right @ f
    return StepFactors(product_left.astype(p.input), product_right.astype(p.input), transposed)


def factored_step(x: Matrix, factors: StepFactors, name: str) -> Matrix:
    """cheat-factored, each step: L X' R in two products of the input type, accumulated in
    the accumulator. Passes the check of a step whose links have the signs the factors were
    built from (0.013 to 0.22 of the bound: ``bench/verification_links.py``, asserted in
    ``tests/verification/test_freivalds.py``); a wrong product for any other signs."""
    p = precision(name)
    middle = x.T if factors.transposed else x
    y = multiply(factors.left, np.ascontiguousarray(middle), name).astype(p.input)
    return multiply(y, factors.right, name)


def shortcut_step(x: Matrix, b: Matrix, name: str, inner: int) -> Matrix:
    """cheat-shortcut: the step of ``inner`` links as protocol v1 defined it (no signs), from
    powers of B instead of a chain. Links 1 .. 2m give Y_2m = P^T X P with P = (B / sqrt(n))^m,
    and the step's product is Y_2m B (inner = 2m + 1; for an even ``inner`` one more link on
    the left: (Y_2m B)^T scaled, rounded, times B). P costs about 2 log2(m) products by
    repeated squaring, against ``inner`` for the chain. Returns the product and counts nothing:
    ``shortcut_products`` says how many products it took."""
    acc = precision(name).accumulator
    n = x.shape[0]
    m = (inner - 1) // 2
    power = np.eye(n, dtype=acc)
    base = (b.astype(acc) * acc.type(1.0 / np.sqrt(n))).astype(acc)
    e = m
    while e:
        if e & 1:
            power = power @ base
        e >>= 1
        if e:
            base = base @ base
    y = (power.T @ x.astype(acc)) @ power
    if (inner - 1) % 2:  # one link more: Y_{2m+1} = s (Y_2m B)^T
        y = (y @ b.astype(acc) * acc.type(1.0 / np.sqrt(n))).T
    y = y.astype(precision(name).input).astype(acc)
    result: Matrix = y @ b.astype(acc)
    return result


def lowrank_step(x: Matrix, b: Matrix, name: str, inner: int, signs: Matrix, rank: int) -> Matrix:
    """cheat-lowrank: the step of ``inner`` signed links approximated at ``rank``.

    A product of many random matrices collapses towards its top singular directions, so
    Y_m = L X' R (L, R the products of the links' factors s D_j B^T and their transposes) is
    close to Q_L (Q_L^T L) X' (R Q_R) Q_R^T, with Q_L, Q_R orthonormal n x rank bases found by
    one randomized range finder each: about 4 rank n^2 flops a link instead of 2 n^3. Refused
    while the links are few (``VERIFICATION_MAX_INNER``, docs/verification.md: measured)."""
    n = x.shape[0]
    x64: Any = x.astype(np.float64)
    left, right, transposed = link_factors(b, inner, signs)  # Y = prod(left) X' prod(right)
    middle = x64.T if transposed else x64

    def apply(factors: list[Any], v: Any, transpose: bool = False) -> Any:
        for f in factors if transpose else reversed(factors):
            v = f.T @ v if transpose else f @ v
        return v

    rng = np.random.default_rng(0x10C4)
    q_right, _ = np.linalg.qr(apply(right, rng.standard_normal((n, rank)), transpose=True))
    core = middle @ apply(right, q_right)
    if left:
        q_left, _ = np.linalg.qr(apply(left, rng.standard_normal((n, rank))))
        core = q_left @ (apply(left, q_left, transpose=True).T @ core)
    result: Matrix = (core @ q_right.T).astype(precision(name).accumulator)
    return result


def shortcut_products(inner: int) -> int:
    """The products :func:`shortcut_step` computes for a step of ``inner`` links."""
    if inner <= 1:
        return 1
    m, count = (inner - 1) // 2, 0
    e = m
    while e:
        count += e & 1
        e >>= 1
        count += 1 if e else 0
    return count + 3 + (inner - 1) % 2


def _report(sink: StepSink, description: str) -> DeviceReport:
    """The device report of a simulated accelerator, with its nonce-bound attestation."""
    body = b"|".join(
        [
            b"simulated",
            sink.challenge.challenge_id.encode(),
            str(sink.device).encode(),
            sink.challenge.nonce,
        ]
    )
    return DeviceReport(sink.device, description, body, SIMULATED_ATTESTATION)


def _unrelated_matrix(seed: int, step: int, n: int, name: str) -> Matrix:
    """A random matrix with the statistics of a real product but no relation to X and B."""
    rng = np.random.default_rng([seed, step, 0xC4EA7])
    wrong: Matrix = (rng.standard_normal((n, n)) * np.sqrt(n)).astype(precision(name).accumulator)
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


def backend_for_simulation(simulation: SimulationConfig) -> Backend:
    """The backend of a simulated center."""
    return SimulatedBackend(simulation)


def faults_for(simulation: SimulationConfig | None) -> CallFaults | NoFaults:
    """Fault injection for flaky simulations; none otherwise."""
    if simulation is not None and simulation.mode is SimulationMode.FLAKY:
        return CallFaults(simulation.flaky_failures)
    return NoFaults()


def health_delay(simulation: SimulationConfig | None) -> float:
    """Seconds a simulated center adds to each health check (cheat-rtt pads its round trip)."""
    if simulation is not None and simulation.mode is SimulationMode.CHEAT_RTT:
        return CHEAT_RTT_SECONDS
    return 0.0
