"""Lower precision than declared, against the check, as n grows: where the tolerance stops refusing.

The check's bound per row (``verification.freivalds``) is ``7 sqrt(n) u n rho``, u the unit
roundoff of the declared accumulator: it grows like n^1.5 (rho ~ sqrt(n)), while the residual
of a computation whose error is one rounding of each input or of the output grows like n
(sqrt(n) terms of size u' sqrt(n) each). The ratio residual / bound of such a cheat falls like
1/n: a cheat refused at small n passes at large n. A running FP16 sum rounds n / kchunk times
a partial sum of size up to sqrt(n), so its residual grows like n^1.5 / sqrt(kchunk) and its
ratio falls like 1/sqrt(n) once these roundings dominate the output's. This bench measures
each, on the challenge's own inputs (``agent.challenge.inputs``) with the real check
(``verification.freivalds.StepChecker``, k = 8, inner = 1), numpy only, no database:

- **fp32, TF32 inputs**: FP32 declared, computed on TF32 tensor cores (inputs rounded to 10
  explicit mantissa bits, round-to-nearest-even, the kinder rounding for the cheat than the
  hardware's truncation; FP32 accumulation).
- **bf16 / fp16, FP16 accumulation**: a running FP16 sum (twice the rate of FP32 accumulation
  on consumer GPUs), each k-chunk of ``--kchunk`` products (one MMA, k = 16) exact in FP32,
  then added to the FP16 sum and rounded. A larger kchunk rounds fewer times: it is *kinder* to
  the cheat (smaller residual), so ``--kchunk 64`` gives a lower bound on what k = 16 shows.
- **bf16 / fp16, product rounded**: the FP32 product rounded to the input type before it is
  returned (half the bytes to copy to the host and hash).
- **fp64, FP32 inputs**: FP64 declared, inputs rounded to FP32, products accumulated in FP64
  (the kindest FP32-based cheat: any FP32 accumulation is far worse).
- **fp32, 3xTF32**: FP32 accuracy from three TF32 products (hi*hi + hi*lo + lo*hi), the
  emulation CUTLASS offers on tensor cores: fewer FP32 units than the rate it reaches.
- **fp32, Strassen 4 levels**: 41 % fewer flops (7/8 per level), every sum in FP32; and
  **bf16, Strassen 1 level**: 12.5 % fewer, the operands' sums rounded to BF16 so that the
  products run on BF16 tensor cores.

Each cell: over the seeds, the smallest and the largest per-seed ratio, where a seed's ratio
is the worst over its k vectors (the check refuses a product when it exceeds 1). A cheat is
refused on every seed when the smallest is above 1; honest rows pass when the largest is
below 1. The summary fits ratio ~ n^slope between the two largest sizes run with every seed
and projects, with that slope, the n at which the smallest ratio falls to 2 and to 1.

    .venv/bin/python bench/verification_precision.py                     # about 7 min on 2 cores
    .venv/bin/python bench/verification_precision.py --sizes 256,512 --big 0   # seconds
    # n = 8192: BF16's rounded product on every seed, FP16 accumulation on one with k 64
    .venv/bin/python bench/verification_precision.py --sizes 8192 --big 0 --precisions bf16 \
        --only honest,rounded
    .venv/bin/python bench/verification_precision.py --sizes '' --big 8192 --kchunk 64 \
        --precisions bf16,fp16 --only accumulation
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from agent.challenge import inputs, multiply  # noqa: E402
from verification.freivalds import StepChecker  # noqa: E402

F32 = np.float32
SEEDS = (11, 12, 13)

Multiply = Callable[[np.ndarray, np.ndarray], np.ndarray]


def tf32(m: np.ndarray) -> np.ndarray:
    """m rounded to TF32 (10 explicit mantissa bits, round to nearest even), held in float32."""
    u = np.ascontiguousarray(m, dtype=F32).view(np.uint32)
    u = (u + np.uint32(0xFFF) + ((u >> 13) & np.uint32(1))) & np.uint32(0xFFFFE000)
    rounded: np.ndarray = u.view(F32)
    return rounded


def fp16_accumulate(x: np.ndarray, b: np.ndarray, kchunk: int) -> np.ndarray:
    """X @ B with a running FP16 accumulator: each k-chunk exact in FP32, added, rounded."""
    x, b = x.astype(F32), b.astype(F32)
    n = x.shape[0]
    total = np.zeros((n, b.shape[1]), np.float16)
    chunk = np.empty((n, b.shape[1]), F32)
    for k in range(0, x.shape[1], kchunk):
        np.matmul(x[:, k : k + kchunk], b[k : k + kchunk], out=chunk)
        chunk += total  # in FP32: the chunk's sum plus the FP16 partial sum, exact enough
        total[...] = chunk  # rounded to FP16 (to nearest even)
    result: np.ndarray = total.astype(F32)
    return result


def three_tf32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A @ B from three TF32 products: hi*hi + (hi*lo + lo*hi), FP32 accumulation."""
    a_hi, b_hi = tf32(a), tf32(b)
    a_lo, b_lo = tf32(a.astype(F32) - a_hi), tf32(b.astype(F32) - b_hi)
    result: np.ndarray = a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)
    return result


def _same(m: np.ndarray) -> np.ndarray:
    return m


def strassen(
    a: np.ndarray,
    b: np.ndarray,
    levels: int,
    round_sum: Callable[[np.ndarray], np.ndarray] = _same,
) -> np.ndarray:
    """A @ B by Strassen's algorithm, ``levels`` deep, 7 products of half size a level instead
    of 8, the operands' sums passed through ``round_sum`` (e.g. to the input type)."""
    if levels == 0:
        result: np.ndarray = a.astype(F32) @ b.astype(F32)
        return result
    h = a.shape[0] // 2
    r = round_sum
    a11, a12, a21, a22 = a[:h, :h], a[:h, h:], a[h:, :h], a[h:, h:]
    b11, b12, b21, b22 = b[:h, :h], b[:h, h:], b[h:, :h], b[h:, h:]

    def s(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return strassen(x, y, levels - 1, round_sum)

    m1 = s(r(a11 + a22), r(b11 + b22))
    m2 = s(r(a21 + a22), b11)
    m3 = s(a11, r(b12 - b22))
    m4 = s(a22, r(b21 - b11))
    m5 = s(r(a11 + a12), b22)
    m6 = s(r(a21 - a11), r(b11 + b12))
    m7 = s(r(a12 - a22), r(b21 + b22))
    c = np.empty((2 * h, 2 * h), F32)
    c[:h, :h] = m1 + m4 - m5 + m7
    c[:h, h:] = m3 + m5
    c[h:, :h] = m2 + m4
    c[h:, h:] = m1 - m2 + m3 + m6
    return c


def cheats(kchunk: int) -> list[tuple[str, str, bool, Multiply]]:
    """(precision, computation, honest, multiply)"""
    bf16 = np.dtype(ml_dtypes.bfloat16)
    return [
        ("fp32", "honest", True, lambda x, b: multiply(x, b, "fp32")),
        ("fp32", "TF32 inputs", False, lambda x, b: tf32(x) @ tf32(b)),
        ("fp32", "3xTF32", False, three_tf32),
        (
            "fp32",
            "Strassen 4 levels",
            False,
            lambda x, b: strassen(x.astype(F32), b.astype(F32), 4),
        ),
        ("bf16", "honest", True, lambda x, b: multiply(x, b, "bf16")),
        (
            "bf16",
            f"FP16 accumulation (k {kchunk})",
            False,
            lambda x, b: fp16_accumulate(x, b, kchunk),
        ),
        (
            "bf16",
            "product rounded to bf16",
            False,
            lambda x, b: multiply(x, b, "bf16").astype(bf16).astype(F32),
        ),
        (
            "bf16",
            "Strassen 1 level",
            False,
            lambda x, b: strassen(
                x.astype(F32), b.astype(F32), 1, lambda m: m.astype(bf16).astype(F32)
            ),
        ),
        ("fp16", "honest", True, lambda x, b: multiply(x, b, "fp16")),
        (
            "fp16",
            f"FP16 accumulation (k {kchunk})",
            False,
            lambda x, b: fp16_accumulate(x, b, kchunk),
        ),
        (
            "fp16",
            "product rounded to fp16",
            False,
            lambda x, b: multiply(x, b, "fp16").astype(np.float16).astype(F32),
        ),
        ("fp64", "honest", True, lambda x, b: multiply(x, b, "fp64")),
        (
            "fp64",
            "FP32 inputs",
            False,
            lambda x, b: x.astype(F32).astype(np.float64) @ b.astype(F32).astype(np.float64),
        ),
    ]


def seed_ratio(name: str, n: int, seed: int, mm: Multiply) -> float:
    """The worst residual / bound over the k = 8 vectors for one seed's product."""
    x, b = inputs(seed, n, name)
    checker = StepChecker(b, name, k=8, rng=np.random.default_rng(seed + 100))
    return max(v.worst_ratio for v in checker.check(x, mm(x, b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512,1024,2048", help="n run with every seed")
    parser.add_argument("--big", type=int, default=4096, help="one more n, fewer seeds (0: none)")
    parser.add_argument("--big-seeds", type=int, default=1)
    parser.add_argument("--kchunk", type=int, default=16)
    parser.add_argument("--precisions", default="fp32,bf16,fp16,fp64")
    parser.add_argument(
        "--only", default="", help="comma-separated words: only the computations naming one"
    )
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    plan = [(n, SEEDS) for n in sizes]
    if args.big:
        plan.append((args.big, SEEDS[: args.big_seeds]))
    names = {v.strip() for v in args.precisions.split(",")}
    words = [v.strip().lower() for v in args.only.split(",") if v.strip()]
    rows = [
        c
        for c in cheats(args.kchunk)
        if c[0] in names and (not words or any(w in c[1].lower() for w in words))
    ]
    print(
        f"Lower precision vs the check, inner = 1, k = 8, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'prec':<5} {'computation':<28} {'n':>5} {'seeds':>5} {'min ratio':>10} "
        f"{'max ratio':>10} {'verdict':<9} {'s':>5}",
        flush=True,
    )
    started = time.perf_counter()
    smallest: dict[tuple[str, str], dict[int, float]] = {}
    for name, label, honest, mm in rows:
        for n, seeds in plan:
            t0 = time.perf_counter()
            ratios = [seed_ratio(name, n, seed, mm) for seed in seeds]
            low, high = min(ratios), max(ratios)
            if honest:
                verdict = "pass" if high <= 1.0 else "FAIL"
            else:
                verdict = "refused" if low > 1.0 else "ACCEPTED"
                if len(seeds) == len(SEEDS):
                    smallest.setdefault((name, label), {})[n] = low
            print(
                f"{name:<5} {label:<28} {n:>5} {len(seeds):>5} {low:>10.3g} {high:>10.3g} "
                f"{verdict:<9} {time.perf_counter() - t0:>5.0f}",
                flush=True,
            )
    print("\nScaling of the smallest ratio (every seed), fitted between the two largest sizes:")
    print(f"{'prec':<5} {'computation':<28} {'slope':>6} {'n at 2':>8} {'n at 1':>8}")
    for (name, label), by_n in smallest.items():
        if len(by_n) < 2:
            continue
        (n1, r1), (n2, r2) = sorted(by_n.items())[-2:]
        slope = math.log(r2 / r1) / math.log(n2 / n1)

        def at(target: float, n2: int = n2, r2: float = r2, slope: float = slope) -> str:
            return f"{n2 * (target / r2) ** (1.0 / slope):>8.0f}" if slope < 0 else f"{'-':>8}"

        print(f"{name:<5} {label:<28} {slope:>6.2f} {at(2.0)} {at(1.0)}")
    print(
        f"(ratio = residual / bound, the check refuses above 1; min / max over the seeds of each "
        f"seed's worst vector; {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
