"""Freivalds' check of a claimed matrix product, and the throughput arithmetic of a challenge.

Checking C = A @ B by recomputing costs O(n^3); Freivalds' algorithm draws a random vector r with
entries in {0, 1} and compares A (B r) with C r in O(n^2). If C != A @ B, a random r exposes the
difference with probability at least 1/2, so k independent vectors accept a wrong product with
probability at most 2^-k in exact arithmetic. In floating point the two sides differ by rounding,
so each component is compared within a bound scaled by the norms of the terms that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.floating]

# Rounding bound factor: |fl(A B) - A B| <= gamma_n |A| |B| with gamma_n ~ n * eps (Higham,
# "Accuracy and Stability of Numerical Algorithms", 3.5); 4x leaves room for blocked kernels.
ROUNDING_SAFETY = 4.0


@dataclass(frozen=True)
class VectorCheck:
    """The outcome for one random vector: passed, and the worst residual / bound ratio."""

    passed: bool
    worst_ratio: float

    def as_json(self) -> dict[str, float | bool]:
        return {"passed": self.passed, "worst_ratio": round(self.worst_ratio, 6)}


def freivalds(
    a: Matrix, b: Matrix, c: Matrix, *, k: int, rng: np.random.Generator, dtype: str
) -> list[VectorCheck]:
    """Check C = A @ B with ``k`` random {0, 1} vectors; one VectorCheck per vector.

    ``dtype`` is the element type the agent computed in: its machine epsilon sets the rounding
    bound. The check itself runs in float64, in which the float32 challenge matrices are exact.
    """
    n = a.shape[0]
    if a.shape != (n, n) or b.shape != (n, n) or c.shape != (n, n):
        raise ValueError("A, B and C must be n x n")
    a64, b64, c64 = (np.asarray(m, dtype=np.float64) for m in (a, b, c))
    abs_a, abs_b = np.abs(a64), np.abs(b64)
    gamma = ROUNDING_SAFETY * n * float(np.finfo(np.dtype(dtype)).eps)
    # All k vectors at once: n x k matrices keep the cost at O(k n^2) with BLAS-2/3 speed.
    r = rng.integers(0, 2, size=(n, k)).astype(np.float64)
    residual = np.abs(a64 @ (b64 @ r) - c64 @ r)
    # |A||B|r bounds the magnitude that rounding acted on (r >= 0, so |r| = r); the tiny floor
    # keeps an all-zero column of r (probability 2^-n) from dividing by zero.
    bound = gamma * (abs_a @ (abs_b @ r)) + np.finfo(np.float64).tiny
    ratio = residual / bound
    worst = ratio.max(axis=0)
    finite = np.isfinite(c64).all()
    return [VectorCheck(passed=bool(finite and w <= 1.0), worst_ratio=float(w)) for w in worst]


def recompute_matches(a: Matrix, b: Matrix, c: Matrix, *, dtype: str) -> bool:
    """The O(n^3) alternative: recompute A @ B and compare within the same rounding bound."""
    n = a.shape[0]
    a64, b64, c64 = (np.asarray(m, dtype=np.float64) for m in (a, b, c))
    gamma = ROUNDING_SAFETY * n * float(np.finfo(np.dtype(dtype)).eps)
    bound = gamma * (np.abs(a64) @ np.abs(b64)) + np.finfo(np.float64).tiny
    return bool((np.abs(a64 @ b64 - c64) <= bound).all())


def tflops(n: int, repetitions: int, seconds: float) -> float:
    """Throughput of a challenge of 2 n^3 FLOPs per repetition done in ``seconds``, in TFLOPS."""
    return 2.0 * n**3 * repetitions / seconds / 1e12
