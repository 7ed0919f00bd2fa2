"""Benchmark challenges: the matrices a seed defines, their product, and its transport in chunks.

A challenge is (seed, n, dtype, repetitions). Both sides derive A and B from the seed with
:func:`matrices`; the agent returns C = A @ B, the verifier checks it (Freivalds) without
recomputing it. This module is pure numpy so that the platform imports it as the one definition
of the challenge matrices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

# Element types a challenge may use, by the names the proto's Dtype maps to.
DTYPES: dict[str, np.dtype[np.floating]] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

# Payload bytes per chunk. The gRPC message adds a few bytes of framing; 16 KiB of headroom
# keeps every RunBenchmarkResponse under 1 MiB.
MAX_CHUNK_BYTES = 1024 * 1024 - 16 * 1024

Matrix = npt.NDArray[np.floating]


def matrices(seed: int, n: int, dtype: str | npt.DTypeLike = "float64") -> tuple[Matrix, Matrix]:
    """The challenge matrices A and B for ``seed``: standard normal n x n, cast to ``dtype``.

    ``np.random.default_rng(seed)`` draws A first, then B, in float64, and both are cast; any
    change here changes every challenge, so the platform and the agent must share this function.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    target = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(target, copy=False)
    b = rng.standard_normal((n, n)).astype(target, copy=False)
    return a, b


def multiply(a: Matrix, b: Matrix, repetitions: int = 1) -> Matrix:
    """Compute A @ B ``repetitions`` times (the timed work) and return the product."""
    if repetitions < 1:
        raise ValueError("repetitions must be >= 1")
    product = a @ b
    for _ in range(repetitions - 1):
        # Reuse the output buffer: repetitions measure arithmetic, not allocation.
        np.matmul(a, b, out=product)
    return product


def flops(n: int, repetitions: int = 1) -> float:
    """Floating-point operations of the challenge: 2 n^3 per multiplication."""
    return 2.0 * n**3 * repetitions


def rows_per_chunk(n: int, itemsize: int, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> int:
    """How many rows of an n x n matrix fit in one chunk (at least one)."""
    return max(1, max_chunk_bytes // (n * itemsize))


def row_blocks(
    product: Matrix, max_chunk_bytes: int = MAX_CHUNK_BYTES
) -> Iterator[tuple[int, int, bytes]]:
    """Split a matrix into (row_offset, rows, little-endian bytes) blocks of consecutive rows."""
    n_rows, n_cols = product.shape
    little = product.astype(product.dtype.newbyteorder("<"), copy=False)
    step = rows_per_chunk(n_cols, product.dtype.itemsize, max_chunk_bytes)
    for offset in range(0, n_rows, step):
        block = little[offset : offset + step]
        yield offset, block.shape[0], np.ascontiguousarray(block).tobytes()


def chunk_count(n: int, itemsize: int, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> int:
    """Number of blocks :func:`row_blocks` yields for an n x n matrix."""
    step = rows_per_chunk(n, itemsize, max_chunk_bytes)
    return -(-n // step)


def assemble(
    blocks: Iterable[tuple[int, int, bytes]], n: int, dtype: str | npt.DTypeLike
) -> Matrix:
    """Rebuild an n x n matrix from row blocks; ValueError on gaps, overlaps or bad sizes.

    Blocks may arrive in any order, but every row must be covered exactly once.
    """
    target = np.dtype(dtype).newbyteorder("<")
    result = np.empty((n, n), dtype=target)
    seen = np.zeros(n, dtype=bool)
    for offset, rows, data in blocks:
        if offset < 0 or rows < 1 or offset + rows > n:
            raise ValueError(f"block rows {offset}..{offset + rows} outside 0..{n}")
        if len(data) != rows * n * target.itemsize:
            raise ValueError(f"block at row {offset} has {len(data)} bytes, not {rows}x{n}")
        if seen[offset : offset + rows].any():
            raise ValueError(f"block at row {offset} overlaps an earlier block")
        seen[offset : offset + rows] = True
        result[offset : offset + rows] = np.frombuffer(data, dtype=target).reshape(rows, n)
    if not seen.all():
        raise ValueError(f"rows missing from the product: {int((~seen).sum())} of {n}")
    return result.astype(target.newbyteorder("="), copy=False)
