"""Where a committed step's time goes on a real GPU: the product, and each way to commit to it.

Every committed product of the challenge chain (C_t, n x n, FP32 for BF16/FP16/FP32 inputs) is
today copied to the host and hashed there with one SHA-256 (``agent/backends.py``
``TorchBackend``). On a fast GPU the product takes a fraction of a millisecond at the caps of
``verification/services.py`` while copying and hashing 64 MiB on the host takes milliseconds,
so a real GPU would measure far below its declaration. This bench measures, on one CUDA
device, for each precision and n in (its cap / 2, its cap):

- **product**: ``torch.mm`` as the agent calls it (BF16/FP16 with an FP32 output,
  ``out_dtype=torch.float32``; FP32 with TF32 off), back to back, timed with CUDA events after
  warm-ups: the median over batches of one batch's mean; achieved TFLOPS (2 n^3 / time); and
  the agent's epilogue of a step (scale, peak, transpose, cast to the input type);
- **parts of a commitment**: the device-to-host copy of the product into pageable memory (a new
  tensor, as the agent does) and into pinned memory; host SHA-256 of it with 1 thread (today's
  commitment) and with ``os.cpu_count()`` threads over as many parts (hashlib releases the GIL
  above 2 KiB); SHA-256 of each CHUNK-byte chunk on the device (``bench/triton_sha256.py``, one
  lane a chunk), the copy of those leaf digests to the host, and the host's SHA-256 over them
  (``tree_digest``, with the swap of the words to bytes); and the host's leaf digests with
  hashlib (``leaf_digests_reference``, one thread: what a verifier pays to check an opened
  product against such a commitment);
- **paths**: for each way to commit, the share of the product's rate a chain keeps when every
  product is committed that way: ``keep`` = product / (product + path) when nothing overlaps,
  ``keep_overlapped`` = product / max(product, path) when the copy and the hashing run while the
  device computes the next product (the copy on the copy engine from another stream, the
  hashing on other cores); for the device leaves the kernel holds the device, so there
  product / max(product + kernel, copy of the digests + tree);
- **check**: the kernel's leaf digests of that product equal hashlib's (``OK`` / ``MISMATCH``).

Lines starting with ``BUDGET`` are for machines (``key=value``); a table for people ends the
run. Standalone: numpy, torch and triton only (no Django, nothing of the project's but
``bench/triton_sha256.py``), so that a GPU machine without the project's dependencies runs it::

    python3 bench/gpu_budget.py                 # every precision, about a minute on an H200
    python3 bench/gpu_budget.py --quick --precisions bf16

Exit status: 0 when everything was measured and every check is OK; 1 when a check mismatched
or a part failed; 2 when there is no CUDA device (nothing measured: every figure n/a).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.triton_sha256 import (  # noqa: E402
    DEFAULT_BLOCK,
    digests_to_bytes,
    leaf_digests,
    leaf_digests_reference,
    tree_digest,
)

# verification/services.py MAX_MATRIX_SIZE_BY_PRECISION, copied so that this bench runs without
# Django; tests/bench/test_gpu_budget.py fails when the two differ.
CAPS = {"fp32": 1024, "bf16": 4096, "fp16": 512, "fp64": 8192}
PRECISIONS = ("bf16", "fp16", "fp32")
CHUNKS = (256, 1024, 4096)
PREFIX = b"interconnect-chain-v3|gpu-budget|0|1|"  # a commitment's prefix (agent.challenge)


def median_ms(samples: list[float]) -> float:
    return float(statistics.median(samples))


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure for a BUDGET line: ``n/a`` when it was not measured."""
    return "n/a" if value is None else f"{value:.{digits}g}"


class Timer:
    """CUDA-event timing of device work and host-clock timing of host work."""

    def __init__(self, torch: Any, device: Any, quick: bool) -> None:
        self.torch, self.device = torch, device
        self.batches, self.per_batch, self.warm = (5, 3, 3) if quick else (15, 10, 10)
        self.host_reps = 3 if quick else 9

    def device_ms(self, fn: Callable[[], Any]) -> float:
        """Median over batches of the mean time of ``per_batch`` back-to-back calls."""
        torch = self.torch
        for _ in range(self.warm):
            fn()
        torch.cuda.synchronize(self.device)
        samples = []
        for _ in range(self.batches):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.per_batch):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / self.per_batch)
        return median_ms(samples)

    def host_ms(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        """Median wall time of ``fn`` (which waits for any device work it starts)."""
        self.torch.cuda.synchronize(self.device)
        fn()  # warm-up: first-touch page faults, thread start-up
        samples = []
        for _ in range(reps or self.host_reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return median_ms(samples)


def product_fn(torch: Any, name: str, x: Any, b: Any) -> tuple[Callable[[], Any], str]:
    """The product as the agent computes it, and a note when torch lacks ``out_dtype``."""
    if name in ("bf16", "fp16"):
        try:
            torch.mm(x[:16, :16], b[:16, :16], out_dtype=torch.float32)
            return (lambda: torch.mm(x, b, out_dtype=torch.float32)), ""
        except (TypeError, RuntimeError, NotImplementedError) as exc:
            note = f"torch.mm has no out_dtype here ({type(exc).__name__}): matmul(x, b).float()"
            return (lambda: torch.matmul(x, b).float()), note
    return (lambda: torch.mm(x, b)), ""


def hash_parts(pool: ThreadPoolExecutor, view: memoryview, threads: int) -> bytes:
    """SHA-256 of ``threads`` consecutive parts in parallel, then of their digests."""
    size = len(view)
    step = -(-size // threads)
    parts = [view[i : i + step] for i in range(0, size, step)]
    digests = pool.map(lambda part: hashlib.sha256(part).digest(), parts)
    return tree_digest(b"".join(digests), PREFIX)


class Budget:
    def __init__(self, torch: Any, args: argparse.Namespace, triton_version: str) -> None:
        self.torch, self.args, self.triton_version = torch, args, triton_version
        self.device = torch.device("cuda", args.device)
        self.timer = Timer(torch, self.device, args.quick)
        self.threads = os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads)
        self.rows: list[tuple[str, int, float, float, str, float | None, float, float]] = []
        self.failures = 0
        self.compiled: set[int] = set()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def line(self, name: str, n: int, text: str) -> None:
        print(f"BUDGET precision={name} n={n} {text}", flush=True)

    def measure(self, name: str, n: int) -> None:
        torch, timer = self.torch, self.timer
        dtype = {
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            "fp32": torch.float32,
            "fp64": torch.float64,
        }[name]
        gen = torch.Generator(device=self.device).manual_seed(n)
        x = torch.randn((n, n), generator=gen, device=self.device).to(dtype)
        b = torch.randn((n, n), generator=gen, device=self.device).to(dtype)
        product, note = product_fn(torch, name, x, b)
        if note:
            self.line(name, n, f"note={note.replace(' ', '_')}")
        product_ms = timer.device_ms(product)
        c = product()
        scale = 1.0 / n**0.5

        def epilogue() -> Any:  # TorchBackend.run_chain after the product, without its sync
            scaled = c * scale
            torch.maximum(scaled.max(), -scaled.min())
            return scaled.t().contiguous().to(dtype)

        epilogue_ms = timer.device_ms(epilogue)
        size = c.numel() * c.element_size()
        tflops = 2.0 * n**3 / (product_ms * 1e-3) / 1e12
        self.line(
            name,
            n,
            f"product_ms={fmt(product_ms)} tflops={fmt(tflops)} epilogue_ms={fmt(epilogue_ms)} "
            f"bytes={size} product_dtype={str(c.dtype).removeprefix('torch.')}",
        )

        torch.cuda.synchronize(self.device)
        pageable_ms = timer.host_ms(lambda: c.to("cpu"))
        pinned = torch.empty(c.shape, dtype=c.dtype, pin_memory=True)

        def to_pinned() -> None:
            pinned.copy_(c, non_blocking=True)
            torch.cuda.synchronize(self.device)

        pinned_ms = timer.host_ms(to_pinned)
        to_pinned()
        view = memoryview(pinned.numpy()).cast("B")
        sha1_ms = timer.host_ms(lambda: hashlib.sha256(view).digest())
        shat_ms = timer.host_ms(lambda: hash_parts(self.pool, view, self.threads))
        parts = {
            "d2h_pageable": pageable_ms,
            "d2h_pinned": pinned_ms,
            "sha256_1t": sha1_ms,
            f"sha256_{self.threads}t": shat_ms,
        }
        for part, ms in parts.items():
            self.line(name, n, f"part={part} ms={fmt(ms)}")
        paths: list[tuple[str, float | None, float, float]] = [
            # (path, device ms beside the product, host ms, total ms)
            ("pageable+sha256", None, pageable_ms + sha1_ms, pageable_ms + sha1_ms),
            ("pinned+sha256", None, pinned_ms + sha1_ms, pinned_ms + sha1_ms),
            (f"pinned+sha256x{self.threads}", None, pinned_ms + shat_ms, pinned_ms + shat_ms),
        ]
        for chunk in self.args.chunks:
            paths += self.device_leaves(name, n, c, view, chunk)
        for path, device_ms, host_ms, total_ms in paths:
            keep = product_ms / (product_ms + total_ms)
            busy = product_ms + (device_ms or 0.0)
            keep_overlapped = product_ms / max(busy, host_ms)
            self.line(
                name,
                n,
                f"path={path} ms={fmt(total_ms)} keep={fmt(keep, 3)} "
                f"keep_overlapped={fmt(keep_overlapped, 3)}",
            )
            self.rows.append((name, n, product_ms, tflops, path, device_ms, host_ms, total_ms))

    def device_leaves(
        self, name: str, n: int, c: Any, view: memoryview, chunk: int
    ) -> list[tuple[str, float | None, float, float]]:
        torch, timer = self.torch, self.timer
        tag = f"chunk={chunk}"
        try:
            if chunk not in self.compiled:
                t0 = time.perf_counter()
                leaf_digests(c, chunk, block=self.args.block)
                torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - t0
                self.compiled.add(chunk)
                self.line(name, n, f"part=compile {tag} s={fmt(seconds, 3)}")
            kernel_ms = timer.device_ms(lambda: leaf_digests(c, chunk, block=self.args.block))
            leaves = leaf_digests(c, chunk, block=self.args.block)
            host = torch.empty(leaves.shape, dtype=torch.int32, pin_memory=True)

            def copy_leaves() -> None:
                host.copy_(leaves.view(torch.int32), non_blocking=True)
                torch.cuda.synchronize(self.device)

            copy_ms = timer.host_ms(copy_leaves)
            copy_leaves()
            tree_ms = timer.host_ms(lambda: tree_digest(digests_to_bytes(host.numpy()), PREFIX))
            reps = 1 if self.args.quick else 3
            verifier_ms = timer.host_ms(lambda: leaf_digests_reference(view, chunk), reps=reps)
            ok = digests_to_bytes(host.numpy()) == leaf_digests_reference(view, chunk)
        except Exception as exc:  # a kernel that does not compile or run: say so, go on
            self.failures += 1
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200].replace(" ", "_")
            self.line(name, n, f"part=leaves_device {tag} error={error}")
            return []
        if not ok:
            self.failures += 1
        self.line(name, n, f"check=leaves {tag} result={'OK' if ok else 'MISMATCH'}")
        for part, ms in (
            ("leaves_device", kernel_ms),
            ("leaves_d2h", copy_ms),
            ("tree_host", tree_ms),
            ("leaves_host_1t", verifier_ms),
        ):
            self.line(name, n, f"part={part} {tag} ms={fmt(ms)}")
        return [
            (f"device-leaves-{chunk}", kernel_ms, copy_ms + tree_ms, kernel_ms + copy_ms + tree_ms)
        ]

    def table(self) -> None:
        print()
        print(
            f"{'prec':5} {'n':>5} {'product ms':>10} {'TFLOPS':>7}  {'commitment path':24} "
            f"{'path ms':>8} {'keep':>6} {'overlap':>7}"
        )
        for name, n, product_ms, tflops, path, device_ms, host_ms, total_ms in self.rows:
            keep = product_ms / (product_ms + total_ms)
            overlapped = product_ms / max(product_ms + (device_ms or 0.0), host_ms)
            print(
                f"{name:5} {n:>5} {product_ms:>10.4f} {tflops:>7.1f}  {path:24} "
                f"{total_ms:>8.3f} {keep:>6.3f} {overlapped:>7.3f}"
            )


def nothing(reason: str) -> int:
    print(f"gpu_budget: {reason}: nothing measured, every figure n/a")
    print(f"BUDGET status=n/a reason={reason.replace(' ', '_')}")
    return 2


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help=f"comma-separated, of {','.join(CAPS)} (default {','.join(PRECISIONS)})",
    )
    parser.add_argument(
        "--chunks", default=",".join(map(str, CHUNKS)), help="leaf sizes in bytes (multiples of 64)"
    )
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="chunks per program")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    args = parser.parse_args(argv)
    args.precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in args.precisions if p not in CAPS]
    if unknown:
        parser.error(f"unknown precisions {unknown}: use {','.join(CAPS)}")
    args.chunks = [int(c) for c in args.chunks.split(",") if c]
    if any(c <= 0 or c % 64 for c in args.chunks):
        parser.error("every chunk must be a positive multiple of 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        import torch
    except ImportError as exc:
        return nothing(f"torch cannot be imported ({exc})")
    if not torch.cuda.is_available():
        return nothing(f"torch {torch.__version__} sees no CUDA device")
    try:
        import triton

        triton_version = str(triton.__version__)
    except ImportError:
        triton_version = "missing"
    budget = Budget(torch, args, triton_version)
    print(
        f"BUDGET env device={torch.cuda.get_device_name(args.device).replace(' ', '_')} "
        f"torch={torch.__version__} cuda={torch.version.cuda} triton={triton_version} "
        f"cpus={budget.threads} quick={int(args.quick)}",
        flush=True,
    )
    for name in args.precisions:
        cap = CAPS[name]
        for n in (cap // 2, cap):
            try:
                budget.measure(name, n)
            except Exception as exc:  # one precision failing must not hide the others
                budget.failures += 1
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200].replace(" ", "_")
                budget.line(name, n, f"error={error}")
            budget.torch.cuda.empty_cache()
    budget.table()
    budget.pool.shutdown()
    print(f"BUDGET status={'ok' if not budget.failures else 'failed'} failures={budget.failures}")
    return 0 if not budget.failures else 1


if __name__ == "__main__":
    sys.exit(main())
