"""Composite steps under attack: how many chained products may sit behind one commitment.

A fast device gets ``inner`` chained products per committed step (``plan_challenge``), and the
verifier checks the step as a whole, through the chain of linear maps, without the intermediate
products. That is sound only if the step cannot be computed with less work. Two shortcuts are
played here against the real check (``verification.freivalds.StepChecker``), per precision and
number of links, on the challenge's own inputs (numpy, no database):

- **squaring** (``agent.simulation.shortcut_step``): with one B and no signs (protocol v1) a step
  is P^T X P B with P a power of B / sqrt(n), computed by repeated squaring. Shown against v1's
  check (all signs +1) and against v2's (the links' signs, ``agent.challenge.link_signs``).
- **low rank** (``agent.simulation.lowrank_step``): a product of many random matrices is nearly
  low-rank, so a step is approximated at rank r with about 4 r n^2 flops a link instead of
  2 n^3. Rank n / 4 (half the work) and 0.4 n (a fifth saved) against v2's check.
- **factored** (``agent.simulation.step_factors``, ``factored_step``): a step is the linear map
  X -> L X' R of fixed factors, up to the roundings the check allows; built once from one
  step's signs (about ``inner`` products) and applied with 2 products a step. Against the check
  of the step whose signs built it (protocol v2 drew the same signs for every step) and of the
  next step, with its own signs (v3).
- **lower precision in the links** (why composite steps are off by default): every link but
  the last computed with a running FP16 sum (``bench.verification_precision.fp16_accumulate``,
  k-chunks of 16; twice the rate on consumer GPUs), or with one level of Strassen whose sums
  are rounded to the input type (12.5 % fewer flops); the step's last product honest. The
  bound allows each link's rounding to the input type, which hides both.

Each cell: per seed, the worst ratio residual / bound over the k = 8 vectors (the check refuses
a product when any vector's ratio exceeds 1); for a cheat the smallest of these over the 3
seeds (above 1: refused on every seed, and the margin is how far above; at most 1: accepted on
at least one seed), for honest the largest (passes below 1).

    .venv/bin/python bench/verification_links.py                 # n = 256, about a minute
    .venv/bin/python bench/verification_links.py --n 128 --links 2,8,32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent.challenge import (  # noqa: E402
    inputs,
    link_input,
    link_signs,
    multiply,
    precision,
    step,
)
from agent.simulation import (  # noqa: E402
    factored_step,
    lowrank_step,
    shortcut_products,
    shortcut_step,
    step_factors,
)
from bench.verification_precision import fp16_accumulate, strassen  # noqa: E402
from verification.freivalds import StepChecker  # noqa: E402

SEEDS = (11, 12, 13)


def cheap_links(
    x: np.ndarray, b: np.ndarray, name: str, inner: int, signs: np.ndarray, how: str
) -> np.ndarray:
    """A step whose links (all but the last product) are computed with FP16 accumulation
    (``how`` = "fp16acc") or one level of Strassen with sums rounded to the input type."""
    low = precision(name).input
    y = x
    for j in range(inner - 1):
        if how == "fp16acc":
            c = fp16_accumulate(y, b, 16)
        else:
            c = strassen(
                y.astype(np.float32),
                b.astype(np.float32),
                1,
                lambda m: m.astype(low).astype(np.float32),
            )
        y = link_input(c, name, signs[j])
    result: np.ndarray = multiply(y, b, name)
    return result


def cell(ratios: list[float], *, honest: bool = False) -> str:
    value = max(ratios) if honest else min(ratios)
    verdict = (
        ("pass" if value <= 1.0 else "FAIL")
        if honest
        else ("refused" if value > 1.0 else "ACCEPTED")
    )
    return f"{value:>10.3g} {verdict:<8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--links", default="2,4,8,16,32,64", help="comma-separated inner values")
    parser.add_argument("--precisions", default="bf16,fp16,fp32")
    args = parser.parse_args()
    n = args.n
    links = [int(v) for v in args.links.split(",")]
    names = [v.strip() for v in args.precisions.split(",")]
    print(
        f"Composite steps, n = {n}, k = 8, seeds {SEEDS}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'prec':<5} {'links':>5} {'honest':>19} {'squaring v1':>19} {'squaring v2':>19} "
        f"{'rank n/4':>19} {'rank 0.4n':>19} {'factored v2':>19} {'factored v3':>19} "
        f"{'fp16-acc links':>19} {'strassen links':>19} "
        f"{'products: chain / squaring / factored':>38}"
    )
    started = time.perf_counter()
    for name in names:
        for inner in links:
            rows: dict[str, list[float]] = {
                k: [] for k in ("h", "v1", "v2", "r4", "r25", "f2", "f3", "acc", "str")
            }
            for seed in SEEDS:
                x, b = inputs(seed, n, name)
                signs = link_signs(seed, n, inner, name, step=1)
                unsigned = np.ones_like(signs)
                checker = StepChecker(b, name, k=8, rng=np.random.default_rng(seed))

                def ratios(
                    c: np.ndarray,
                    s: np.ndarray = signs,
                    checker: StepChecker = checker,
                    x: np.ndarray = x,
                    inner: int = inner,
                ) -> list[float]:
                    return [v.worst_ratio for v in checker.check(x, c, inner, s)]

                rows["h"] += ratios(step(x, b, name, inner, signs))
                if inner > 2:
                    cheat = shortcut_step(x, b, name, inner)
                    rows["v1"].append(max(ratios(cheat, unsigned)))
                    rows["v2"].append(max(ratios(cheat)))
                for key, rank in (("r4", n // 4), ("r25", n * 2 // 5)):
                    rows[key].append(max(ratios(lowrank_step(x, b, name, inner, signs, rank))))
                if inner > 1:
                    factored = factored_step(x, step_factors(b, name, inner, signs), name)
                    rows["f2"].append(max(ratios(factored)))  # the signs it was built from (v2)
                    following = link_signs(seed, n, inner, name, step=2)
                    rows["f3"].append(max(ratios(factored, following)))  # the next step's (v3)
                    if name != "fp32":
                        acc = cheap_links(x, b, name, inner, signs, "fp16acc")
                        rows["acc"].append(max(ratios(acc)))
                    cheap = cheap_links(x, b, name, inner, signs, "strassen")
                    rows["str"].append(max(ratios(cheap)))
            squaring = (
                (cell(rows["v1"]) + " " + cell(rows["v2"]))
                if rows["v1"]
                else f"{'n/a':>19} {'n/a':>19}"
            )
            print(
                f"{name:<5} {inner:>5} {cell(rows['h'], honest=True)} {squaring} "
                f"{cell(rows['r4'])} {cell(rows['r25'])} "
                + " ".join(
                    cell(rows[key]) if rows[key] else format("n/a", ">19")
                    for key in ("f2", "f3", "acc", "str")
                )
                + " "
                f"{inner:>20} / {shortcut_products(inner) if inner > 2 else inner} / 2",
                flush=True,
            )
    print(
        f"(a cell: per seed the worst residual / bound over the vectors; the smallest over the "
        f"seeds for a cheat, the largest for honest; > 1 is refused; "
        f"{time.perf_counter() - started:.0f} s; "
        f"precision unit roundoffs: "
        + ", ".join(f"{p} {precision(p).input_roundoff:.1e}" for p in names)
        + ")"
    )


if __name__ == "__main__":
    main()
