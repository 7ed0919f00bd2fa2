"""Freivalds' check of one committed chain step, with a tolerance derived per precision.

Checking C = X @ B by recomputing costs O(n^3). Freivalds' algorithm compares C r with X (B r) in
O(n^2) for a random vector r. We draw r with independent random signs (+1/-1), *after* the
agent committed to C: if C differs from X @ B in any entry by more than the tolerance, every
such vector exposes it (|r_j| = 1, so a single wrong entry is never multiplied by 0), and k
vectors leave a wrong product undetected only if its errors cancel k times by chance.

Tolerance, derived (written here because the verdict rests on it)
-----------------------------------------------------------------
Let u be the unit roundoff of the accumulator (2^-24 for FP32, used by BF16/FP16/FP32
challenges; 2^-53 for FP64). BF16 and FP16 inputs multiply exactly in FP32, so the only
rounding is in the n additions of each entry (and, for FP32/FP64 inputs, one rounding per
product, which is smaller). Whatever the order of summation (blocked, pairwise, split-K, tensor
core trees) and even with round-toward-zero adders, each addition's error is at most u times a
partial sum, so

    |e_ij| <= u * sum_k |s_k|  <=  u * n * max_k |s_k|.

The inputs are zero-mean random numbers chosen by the verifier, so the partial sums of entry
(i, j) are a random walk whose size is the row's root-mean-square rho_i; we take
max_k |s_k| <= rho_i, i.e. E_i = u * n * rho_i, with rho_i^2 = sum_k X_ik^2 mean_j(B_kj^2)
computed by the verifier from X and B (never from the agent's C). Honest residuals of numpy,
OpenBLAS and tensor cores are far below this (measured in ``tests/verification/test_freivalds.py``).

The residual of one component, R_i = sum_j r_j e_ij, is a sum of n terms with independent random
signs and magnitude <= E_i, so by Hoeffding's inequality P(|R_i| > lam sqrt(n) E_i) <= 2 exp(-lam^2
/ 2). With lam = 7 an honest component is refused with probability <= 5e-11.

    bound_i = LAMBDA * sqrt(n) * u * n * rho_i

What it rejects (``tests/verification/test_freivalds.py`` shows each): a single entry off by
more than bound_i (at n = 1024 in FP32/BF16: 0.44, while entries are about 32 in size); FP8-class
inputs (relative error 2^-4 per input, residuals ~100x the bound at n = 1024); BF16 inputs where
FP32 was asked (2^-9); a product rounded to BF16 before it is returned (2^-9); a matrix
unrelated to X @ B. The false-acceptance probability of a product that is wrong anywhere is at
most 2^-k (each vector, by the classic argument on the sign of r_j for one wrong column).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.challenge import Matrix, precision

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # a virtualenv built before the dependency: same results, more CPU time
    ThreadpoolController = None

_controller: Any = None  # found once per process (inspecting the loaded libraries costs ~1 ms)

# Hoeffding's factor: an honest component is refused with probability <= 2 exp(-LAMBDA^2 / 2).
LAMBDA = 7.0


# Up to this n the checks' products run on one BLAS thread (see ``one_blas_thread``).
ONE_THREAD_MAX_N = 2048


@contextlib.contextmanager
def one_blas_thread(n: int) -> Iterator[None]:
    """Run the block with BLAS on one thread when n <= ``ONE_THREAD_MAX_N``. The checks'
    products (n x n by n x k) are bound by memory, not arithmetic: up to n = 2048 a second
    OpenBLAS thread added nothing but spinning, which doubled the verifier's CPU time in
    ``bench/verification_cost.py``. Larger matrices keep every thread (more memory bandwidth
    on a large host; not measured here)."""
    global _controller
    if ThreadpoolController is None or n > ONE_THREAD_MAX_N:
        yield
        return
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class VectorCheck:
    """The outcome for one random vector: passed, and the worst residual / bound ratio."""

    passed: bool
    worst_ratio: float

    def as_json(self) -> dict[str, float | bool]:
        return {"passed": self.passed, "worst_ratio": round(self.worst_ratio, 6)}


class StepChecker:
    """Freivalds on many steps that share B (one device's chain): B's side is computed once.

    The k sign vectors are drawn once per device, after every commitment arrived; each step's
    check then costs two conversions, two n x k products and one n-vector product.
    """

    def __init__(self, b: Matrix, name: str, *, k: int, rng: np.random.Generator) -> None:
        n = b.shape[0]
        if b.shape != (n, n):
            raise ValueError("B must be n x n")
        self.n, self.name, self.k = n, name, k
        b64 = np.asarray(b, dtype=np.float64)
        self._b64 = b64
        self.r = rng.choice(np.array([-1.0, 1.0]), size=(n, k))
        self.br = b64 @ self.r
        # mean_j(B_kj^2): rho_i^2 = sum_k X_ik^2 mean_j(B_kj^2) (module docstring).
        self.b2 = (b64 * b64).mean(axis=1)
        self.scale = LAMBDA * math.sqrt(n) * precision(name).unit_roundoff * n

    def bound(self, x: Matrix) -> npt.NDArray[np.float64]:
        """The residual bound of each row for input X."""
        x64 = np.asarray(x, dtype=np.float64)
        rho = np.sqrt((x64 * x64) @ self.b2)
        bound: npt.NDArray[np.float64] = self.scale * rho + np.finfo(np.float64).tiny
        return bound

    def check(
        self, x: Matrix, c: Matrix, inner: int = 1, signs: Matrix | None = None
    ) -> list[VectorCheck]:
        """Check C = X @ B (``inner`` = 1), or the composite step of ``inner`` chained products
        with the links' ``signs`` (``agent.challenge.step``, ``link_signs``); one VectorCheck
        per vector.

        X may be any view (the verifier passes ``scaled_rounded(C_{t-1}).T``, no copy). A
        non-finite entry of C makes its component of C r non-finite, and the check fails.
        """
        n = self.n
        if x.shape != (n, n) or c.shape != (n, n):
            raise ValueError("X and C must be n x n")
        cr = np.asarray(c, dtype=np.float64) @ self.r
        x64 = np.asarray(x, dtype=np.float64)
        if inner == 1:
            expected = x64 @ self.br
            bound = self.bound(x64)[:, None]
        else:
            if signs is None or signs.shape != (inner - 1, n):
                raise ValueError("a composite step needs its (inner - 1) x n link signs")
            expected = self._composite(x64, inner, np.asarray(signs, dtype=np.float64))
            bound = self.composite_bound(x64, inner, expected)
        ratio = np.abs(cr - expected) / bound
        if not np.isfinite(ratio).all():
            return [VectorCheck(passed=False, worst_ratio=math.inf) for _ in range(self.k)]
        worst = ratio.max(axis=0)
        return [VectorCheck(passed=bool(w <= 1.0), worst_ratio=float(w)) for w in worst]

    def _composite(
        self, x64: npt.NDArray[np.float64], inner: int, signs: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """(Y_{inner-1} B) r without the intermediate roundings, where Y_0 = X and
        Y_j = s D_j (Y_{j-1} B)^T (D_j = diag of the link's signs): one n x n by n x k product
        per link plus O(n k) for D_j, so O(inner k n^2). Iterative (a step may hold 1024 links):

            Y_j v   = s D_j B^T (Y_{j-1}^T v)      Y_j^T v = s Y_{j-1} (B D_j v)
        """
        b64 = self._b64
        s = 1.0 / math.sqrt(self.n)
        v: Any = self.br  # Y_{inner-1} (B r): evaluate Y_m v for m = inner - 1
        transposed = False
        after: list[int] = []  # links whose s D_j B^T is applied on the way back up
        for j in range(inner - 1, 0, -1):
            d = signs[j - 1][:, None]
            if transposed:  # Y_j^T v = s Y_{j-1} (B D_j v)
                v = s * (b64 @ (d * v))
            else:  # Y_j v = s D_j B^T (Y_{j-1}^T v)
                after.append(j)
            transposed = not transposed
        v = x64.T @ v if transposed else x64 @ v
        for j in reversed(after):
            v = s * (signs[j - 1][:, None] * (b64.T @ v))
        result: npt.NDArray[np.float64] = v
        return result

    def composite_bound(
        self,
        x64: npt.NDArray[np.float64],
        inner: int,
        expected: npt.NDArray[np.float64] | None = None,
    ) -> Any:
        """The bound of a composite step: the accumulation term with the output rows' size
        taken as their mean, plus the intermediate roundings: each of the inner - 1 roundings
        to the input type moves an entry by at most u_in of its size, in random directions, and
        the links carry that to the output at the output's size, so R_i gains sqrt(inner - 1)
        u_in rho per sqrt(n) random signs (LAMBDA standard deviations of margin, as above).

        The output's size rho: a link keeps the size only on average (B / sqrt(n) has a
        spectral radius near 1, not 1), so over hundreds of links it drifts. rho is the larger
        of the input's (sqrt(n mean(B^2)) rms(X)) and the one read from the verifier's *own*
        exact ``expected`` = C r (E[(C r)_i^2] = sum_j C_ij^2 = n rho^2 for random signs),
        never from the agent's C."""
        rho = math.sqrt(self.n * float(self.b2.mean())) * math.sqrt(float((x64 * x64).mean()))
        if expected is not None and expected.size:
            rho = max(rho, math.sqrt(float((expected * expected).mean()) / self.n))
        u_in = precision(self.name).input_roundoff
        rounding = LAMBDA * math.sqrt(self.n) * math.sqrt(inner - 1) * u_in * rho
        return self.scale * rho + rounding + np.finfo(np.float64).tiny


def row_scale(x: Matrix, b: Matrix) -> npt.NDArray[np.float64]:
    """rho_i: the root-mean-square size of row i of X @ B, from X and B only (O(n^2))."""
    x64 = np.asarray(x, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    rho: npt.NDArray[np.float64] = np.sqrt((x64 * x64) @ (b64 * b64).mean(axis=1))
    return rho


def bound(x: Matrix, b: Matrix, name: str) -> npt.NDArray[np.float64]:
    """The residual bound of each row (see the module docstring)."""
    n = x.shape[0]
    u = precision(name).unit_roundoff
    tiny = float(np.finfo(np.float64).tiny)
    scaled: npt.NDArray[np.float64] = LAMBDA * math.sqrt(n) * u * n * row_scale(x, b) + tiny
    return scaled


def freivalds(
    x: Matrix, b: Matrix, c: Matrix, *, k: int, rng: np.random.Generator, name: str
) -> list[VectorCheck]:
    """Check C = X @ B with ``k`` random sign vectors; one VectorCheck per vector.

    ``name`` is the challenge precision; the check runs in float64, in which every input type
    and FP32 products are exact.
    """
    n = x.shape[0]
    if x.shape != (n, n) or b.shape != (n, n) or c.shape != (n, n):
        raise ValueError("X, B and C must be n x n")
    return StepChecker(b, name, k=k, rng=rng).check(x, c)


def tflops(n: int, steps: int, seconds: float) -> float:
    """Throughput of a chain of ``steps`` products of 2 n^3 FLOPs done in ``seconds``, TFLOPS."""
    return 2.0 * n**3 * steps / seconds / 1e12
