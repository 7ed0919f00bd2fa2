"""Benchmark challenges: the one definition both the agent and the platform's verifier use.

A challenge gives each accelerator under test its own seed and asks it for a **sequential chain**
of ``steps`` matrix products in one precision (``bf16``, ``fp16``, ``fp32`` or ``fp64``)::

    A, B      = inputs(seed, n, precision)       # zero-mean, unit variance, exactly representable
    X_0  = A
    C_t  = X_{t-1} @ B        # accumulated in the precision's accumulator
    h_t  = digest(C_t)        # the step's commitment, sent at once
    X_t  = next_input(C_t, B, h_t)  # ((C_t / sqrt(n)) 2^-k)^T + B P D, rounded to the input type

Each step needs the whole previous product (the transpose mixes every row into every row of the
next step), so the chain cannot be computed faster than its steps one after another, and it
cannot be precomputed: the seed is drawn by the verifier. After each step the agent sends
``digest(C_t)``, a SHA-256 commitment to the exact bytes of the product *before* it is rounded
to the next input. The verifier's clock stops at the last commitment; only then does it choose
which steps to open, and the opened products must hash to what was committed.

The term ``B P D`` (``step_mix``: B's columns permuted and signed as drawn from the commitment
itself, protocol v4) keeps every input full-rank whatever the committed product: without it a
prover that committed one fake product (all zeros, or of rank one) made every later input
degenerate and every later product free to compute and exact, so that only a check of the
faked step itself caught it. With it, a faked step saves that one product and no other; and
since the term comes from the hash of the product, no product can be chosen to cancel it.

Inputs are uniform on [-sqrt(3), sqrt(3)) rounded to the input type: zero mean, unit variance, not
small integers (which an INT8 unit would multiply exactly at twice the BF16 rate), and exactly
representable, so the only rounding is the accumulation's. This module is pure numpy (plus
``ml_dtypes`` for BF16) so that the platform imports it; backends that compute on accelerators
live in ``agent.backends``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.generic]


@dataclass(frozen=True)
class Precision:
    """A challenge precision: what the inputs are, what the products accumulate in."""

    name: str
    input: np.dtype[np.generic]
    accumulator: np.dtype[np.floating]

    @property
    def input_roundoff(self) -> float:
        """u of the input type: 2^-8 for BF16, 2^-11 for FP16, 2^-24 for FP32, 2^-53 for FP64."""
        return float(ml_dtypes.finfo(self.input).eps) / 2.0

    @property
    def unit_roundoff(self) -> float:
        """u of the accumulator: half its machine epsilon (2^-24 for FP32, 2^-53 for FP64)."""
        return float(np.finfo(self.accumulator).eps) / 2.0


PRECISIONS: dict[str, Precision] = {
    # Tensor-core precisions: 16-bit inputs, FP32 accumulation and FP32 output.
    "bf16": Precision("bf16", np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)),
    "fp16": Precision("fp16", np.dtype(np.float16), np.dtype(np.float32)),
    "fp32": Precision("fp32", np.dtype(np.float32), np.dtype(np.float32)),
    "fp64": Precision("fp64", np.dtype(np.float64), np.dtype(np.float64)),
}

# Payload bytes per chunk. The gRPC message adds a few bytes of framing; 16 KiB of headroom
# keeps every message under 1 MiB.
MAX_CHUNK_BYTES = 1024 * 1024 - 16 * 1024


def precision(name: str) -> Precision:
    """The Precision called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown precision {name!r}; known: {', '.join(sorted(PRECISIONS))}"
        ) from None


# Inputs are uniform on [-sqrt(3), sqrt(3)): zero mean and unit variance, so the chain's entries
# keep their size step after step (C_t / sqrt(n) has unit variance again).
INPUT_HALF_WIDTH = math.sqrt(3.0)


def input_matrix(seed: int, which: int, n: int, name: str) -> Matrix:
    """A (``which`` = 0) or B (``which`` = 1) of the challenge for ``seed``: n x n values drawn
    uniformly on [-sqrt(3), sqrt(3)) in float64 from ``np.random.default_rng([seed, which])``
    and rounded to the input type.

    Zero mean, unit variance, exactly representable in the input type, and not small integers
    (which an INT8 unit would multiply exactly at twice the BF16 rate). Each matrix has its
    own stream, so the verifier draws B alone when it does not check step 1, and uniform
    draws cost the verifier a third of what normals did. Any change here changes every
    challenge: the platform and the agent share this function.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    p = precision(name)
    rng = np.random.default_rng([seed, which])
    matrix: Matrix = np.empty((n, n), dtype=p.input)
    # A block of rows at a time (about 1 MiB of float64, which stays in cache): the generator
    # yields the same stream in pieces, and the arithmetic and the rounding act entry by
    # entry, so the bits are those of drawing the whole n x n matrix at once (tested), at a
    # quarter less CPU time than writing and reading back an n x n float64 array.
    rows = max(1, (1 << 20) // (8 * n))
    buffer = np.empty((rows, n))
    for start in range(0, n, rows):
        values = buffer[: min(rows, n - start)]
        rng.random(out=values)
        values *= 2.0 * INPUT_HALF_WIDTH
        values -= INPUT_HALF_WIDTH
        matrix[start : start + values.shape[0]] = values  # rounded to the input type
    return matrix


def inputs(seed: int, n: int, name: str) -> tuple[Matrix, Matrix]:
    """The challenge's A and B for ``seed`` (:func:`input_matrix`)."""
    return input_matrix(seed, 0, n, name), input_matrix(seed, 1, n, name)


def chain_scale(n: int, name: str) -> np.generic:
    """The factor 1/sqrt(n), in the accumulator type, that keeps every step's entries near 1."""
    return precision(name).accumulator.type(1.0 / math.sqrt(n))


# At each committed step the next input is brought back to a maximum in [4, 8) by a power of
# two (see ``boundary_shift``).
BOUNDARY_EXPONENT = 3


def boundary_shift(peak: float) -> int:
    """k such that ``peak * 2**-k`` lies in [2^(BOUNDARY_EXPONENT - 1), 2^BOUNDARY_EXPONENT).

    Why: X -> (X B / sqrt(n))^T grows or shrinks by the spectral radius of B / sqrt(n) per
    product, close to 1 but not 1 (a few % a product at n = 256), so a chain of thousands of
    products overflows FP16 or fades to zero. Scaling by a power of two is exact, and ``peak``
    (the largest |entry| of the scaled committed product) is read from bits both sides have, so
    the agent and the verifier shift alike. 0 for a healthy chain at n >= 1024; 0 for a
    non-finite or zero peak (such a product fails the check anyway).
    """
    if not math.isfinite(peak) or peak <= 0.0:
        return 0
    return math.frexp(peak)[1] - BOUNDARY_EXPONENT


def _scaled_at_boundary(product: Matrix, name: str) -> Matrix:
    """s C_t in the accumulator type, times 2^-k (``boundary_shift``): exact, no rounding."""
    p = precision(name)
    scaled: Any = product.astype(p.accumulator, copy=False) * chain_scale(product.shape[0], name)
    peak = float(max(scaled.max(), -scaled.min())) if scaled.size else 0.0
    shift = boundary_shift(peak)
    if shift:
        scaled *= p.accumulator.type(2.0**-shift)  # in place: a fresh array, exact
    result: Matrix = scaled
    return result


def boundary_factor(product: Matrix | RowBlocks, name: str) -> np.generic | None:
    """The power of two 2^-k that :func:`boundary_shift` gives the committed C_t (None for
    k = 0), read from the *unscaled* product's largest and smallest entries, so that the
    verifier can scale and round C_t a block of rows at a time (:func:`scaled_rounded_rows`).

    Equal to what :func:`_scaled_at_boundary` reads from every scaled entry: s > 0 and
    round-to-nearest is monotone and symmetric, so max_ij fl(s C_ij) = fl(s max_ij C_ij) and
    min_ij fl(s C_ij) = fl(s min_ij C_ij) (NaN propagates through both alike)."""
    p = precision(name)
    if not product.size:
        return None
    s: Any = chain_scale(product.shape[0], name)
    high: Any = p.accumulator.type(product.max()) * s
    low: Any = p.accumulator.type(product.min()) * s
    shift = boundary_shift(float(max(high, -low)))
    return p.accumulator.type(2.0**-shift) if shift else None


def scaled_rounded_rows(
    rows: Matrix,
    n: int,
    name: str,
    factor: np.generic | None,
    term: StepTerm,
    start: int,
) -> Matrix:
    """Rows ``start`` .. ``start + len(rows)`` of :func:`scaled_rounded` for those rows of the
    (n x n) product, its ``boundary_factor`` and the step's ``term``: the same operations,
    entry by entry, so the same bits."""
    p = precision(name)
    scaled: Any = rows.astype(p.accumulator, copy=False) * chain_scale(n, name)
    if factor is not None:
        scaled *= factor  # in place: a fresh array, exact
    scaled += term.rows(start, rows.shape[0])  # one rounding in the accumulator type
    if p.input == p.accumulator:
        result: Matrix = scaled
        return result
    rounded: Matrix = scaled.astype(p.input).astype(p.accumulator)  # exact: input fits in acc
    return rounded


def scaled_rounded(product: Matrix, name: str, term: StepTerm) -> Matrix:
    """The committed C_t turned into the next step's input, rounded to the input type, held in
    the accumulator type, *not* transposed: X_t is its transpose (the same entries as
    :func:`next_input`). The verifier reads it a block of rows at a time
    (:func:`boundary_factor`, :func:`scaled_rounded_rows`); this is the whole matrix at once."""
    n = product.shape[0]
    return scaled_rounded_rows(product, n, name, boundary_factor(product, name), term, 0)


def step_mix(commitment: bytes, n: int, name: str) -> tuple[npt.NDArray[np.intp], Matrix]:
    """pi_t and d_t of the term ``B P(pi_t) D(d_t)`` of the next input (protocol v4): column c
    of the term is d_c times column pi_t(c) of B, with pi_t a permutation of the n columns and
    d_t in {-1, +1}^n (in the accumulator type), both drawn from the step's commitment h_t
    (``np.random.default_rng`` seeded with its 256 bits: the permutation first, then the
    signs).

    From the commitment, not from the seed: with the term known in advance a prover could
    commit a product chosen to cancel it (C_t = -(B P D)^T sqrt(n), up to the power-of-two
    shift) and make the next input degenerate and the next product cheap. A product built to
    cancel one guess of the term commits to another: the permutation leaves almost no column
    where the guess and the draw agree (signs alone would have let half of them cancel), and
    a product that cancels the term drawn from its own hash would be a fixed point of
    SHA-256."""
    if len(commitment) != 32:
        raise ValueError("a step's commitment is a 32-byte SHA-256 digest")
    rng = np.random.default_rng(int.from_bytes(commitment, "big"))
    permutation: npt.NDArray[np.intp] = rng.permutation(n).astype(np.intp)
    bits = rng.integers(0, 2, size=n, dtype=np.int8)
    signs: Matrix = (1 - 2 * bits).astype(precision(name).accumulator)
    return permutation, signs


@dataclass(frozen=True)
class StepTerm:
    """The term ``B P D`` added to the scaled committed product before it becomes the next
    input (:func:`step_mix`), held for the verifier's blocks of rows (the layout of C_t, in
    which the next input is transposed): row c of the term's transpose is d_c times column
    pi(c) of B."""

    b: Matrix  # B, any type that widens exactly to the accumulator
    permutation: npt.NDArray[np.intp]  # pi: column c of the term is column pi(c) of B
    signs: Matrix  # d, (n,) in the accumulator type

    @classmethod
    def of(cls, b: Matrix, commitment: bytes, name: str) -> StepTerm:
        """The term of the step whose commitment is ``commitment``."""
        permutation, signs = step_mix(commitment, b.shape[0], name)
        return cls(b, permutation, signs)

    def rows(self, start: int, count: int) -> Matrix:
        """Rows ``start`` .. ``start + count`` of (B P D)^T, in the accumulator type (exact)."""
        acc = self.signs.dtype
        columns: Any = self.b[:, self.permutation[start : start + count]].T.astype(acc)
        block: Matrix = columns * self.signs[start : start + count, None]
        return block

    def matrix(self) -> Matrix:
        """B P D, n x n in the accumulator type."""
        full: Matrix = np.ascontiguousarray(self.rows(0, self.b.shape[0]).T)
        return full


def next_input(product: Matrix, name: str, b: Matrix, commitment: bytes) -> Matrix:
    """X_t from the committed C_t, B and C_t's commitment h_t: C_t scaled by 1/sqrt(n) in the
    accumulator type and by the power of two of :func:`boundary_shift`, transposed, plus
    ``B P(pi_t) D(d_t)`` (:func:`step_mix`) in the accumulator type, rounded to the input type.

    Multiplication, addition and rounding are IEEE round-to-nearest-even on every backend
    (numpy, ml_dtypes and torch alike), so both sides derive the same X_t from the same C_t
    bits.
    """
    p = precision(name)
    term = StepTerm.of(b, commitment, name)
    scaled: Any = _scaled_at_boundary(product, name).T
    scaled = scaled + term.matrix()
    return np.ascontiguousarray(scaled).astype(p.input)


def link_signs(seed: int, n: int, inner: int, name: str, *, step: int) -> Matrix:
    """The random signs of the links inside committed step ``step`` (from 1): row j
    (0 .. inner - 2) holds d_j in {-1, +1}^n, drawn from
    ``np.random.default_rng([seed, 2, step])`` (its own stream, so A and B are unchanged), in
    the accumulator type.

    Why signs: with one B and no signs, the step's composite X B (B^T ...) is a *power* of B
    (up to transposes), which a cheater computes with log2(inner) squarings instead of
    ``inner`` products and still passes the check (measured: 8 products for 33, 11 for 257;
    ``tests/verification/test_freivalds.py``). Link j multiplies by D_j, so the factors
    B D_j differ and their product has no such shortcut; the verifier applies D_j to its
    vectors at O(n k) a link.

    Why new signs every step (protocol v3): a step is the linear map X -> L X' R of fixed
    factors (up to the links' roundings, which the check must allow). With the same signs in
    every step (v2), a cheater computed L and R once per challenge and then every step with 2
    products instead of ``inner``, and passed the check (0.013 to 0.22 of the bound:
    ``bench/verification_links.py``; ``agent.simulation.factored_step``, cheat mode
    ``cheat-factored``). With each step's own
    signs, L and R cost as many products as the step itself.
    """
    p = precision(name)
    if inner <= 1:
        return np.empty((0, n), dtype=p.accumulator)
    if step < 1:
        raise ValueError("steps count from 1")
    rng = np.random.default_rng([seed, 2, step])
    bits = rng.integers(0, 2, size=(inner - 1, n), dtype=np.int8)
    signs: Matrix = (1 - 2 * bits).astype(p.accumulator)
    return signs


def link_input(product: Matrix, name: str, signs: Matrix) -> Matrix:
    """The input of the next product *inside* a committed step (``step``, ``inner`` > 1):
    column j of the product times s d_j (s = 1/sqrt(n), d the link's signs from
    :func:`link_signs`; exact), transposed, rounded. No power-of-two shift: the verifier checks
    the step through these linear maps without seeing the products."""
    p = precision(name)
    row: Any = signs
    factor = (row * chain_scale(product.shape[0], name)).astype(p.accumulator)
    scaled = product.astype(p.accumulator, copy=False) * factor[None, :]
    return np.ascontiguousarray(scaled.T).astype(p.input)


def multiply(x: Matrix, b: Matrix, name: str) -> Matrix:
    """One step on the host: X @ B with the precision's accumulator (the numpy reference)."""
    acc = precision(name).accumulator
    result: Matrix = np.matmul(x.astype(acc, copy=False), b.astype(acc, copy=False))
    return result


def step(x: Matrix, b: Matrix, name: str, inner: int = 1, signs: Matrix | None = None) -> Matrix:
    """One committed step: ``inner`` chained products, the last one returned unrounded.

    ``inner`` > 1 puts more arithmetic behind each commitment (a fast accelerator would
    otherwise spend more time hashing products than computing them): the intermediate products
    are signed by ``signs`` (:func:`link_signs`, required then), scaled, transposed and rounded
    (:func:`link_input`), and never sent.
    """
    if inner > 1 and (signs is None or signs.shape[0] < inner - 1):
        raise ValueError("a step of inner > 1 products needs its link_signs(seed, n, inner, ...)")
    y = x
    for j in range(inner - 1):
        assert signs is not None
        y = link_input(multiply(y, b, name), name, signs[j])
    return multiply(y, b, name)


def chain(
    seed: int,
    n: int,
    name: str,
    steps: int,
    inner: int = 1,
    *,
    challenge_id: str = "chain",
    device: int = 0,
) -> Iterator[Matrix]:
    """The products C_1 .. C_steps of device ``device``'s chain in challenge ``challenge_id``
    for ``seed``, computed on the host (each next input depends on the step's commitment)."""
    x, b = inputs(seed, n, name)
    for t in range(1, steps + 1):
        product = step(x, b, name, inner, link_signs(seed, n, inner, name, step=t))
        yield product
        h = digest(product, name, challenge_id=challenge_id, device=device, step=t)
        x = next_input(product, name, b, h)


def canonical_bytes(product: Matrix, name: str) -> bytes:
    """The bytes a commitment covers: the product in the accumulator type, little-endian, C
    order."""
    acc = precision(name).accumulator.newbyteorder("<")
    return np.ascontiguousarray(product, dtype=acc).tobytes()


def digest(
    product: Matrix | RowBlocks, name: str, *, challenge_id: str, device: int, step: int
) -> bytes:
    """SHA-256 commitment to step ``step`` of ``device`` in challenge ``challenge_id``.

    The challenge id and the position are hashed in, so a commitment cannot be replayed from
    another run, another device or another step.
    """
    h = hashlib.sha256()
    h.update(f"interconnect-chain-v4|{challenge_id}|{device}|{step}|{name}|".encode())
    acc = precision(name).accumulator.newbyteorder("<")
    parts = product.blocks if isinstance(product, RowBlocks) else (product,)
    for part in parts:  # consecutive rows: their bytes in order are the product's
        contiguous: Any = np.ascontiguousarray(part, dtype=acc)
        h.update(memoryview(contiguous).cast("B"))  # the array's own bytes, no copy
    return h.digest()


def flops(n: int, steps: int = 1, inner: int = 1) -> float:
    """Floating-point operations of a chain: 2 n^3 per product, ``inner`` products a step."""
    return 2.0 * n**3 * steps * inner


def rows_per_chunk(n: int, itemsize: int, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> int:
    """How many rows of an n x n matrix fit in one chunk (at least one)."""
    return max(1, max_chunk_bytes // (n * itemsize))


def row_blocks(
    product: Matrix, name: str, max_chunk_bytes: int = MAX_CHUNK_BYTES
) -> Iterator[tuple[int, int, bytes]]:
    """Split a product into (row_offset, rows, bytes) blocks of consecutive rows, in the bytes
    :func:`canonical_bytes` covers."""
    acc = precision(name).accumulator.newbyteorder("<")
    n_rows, n_cols = product.shape
    step = rows_per_chunk(n_cols, acc.itemsize, max_chunk_bytes)
    for offset in range(0, n_rows, step):
        block = np.ascontiguousarray(product[offset : offset + step], dtype=acc)
        yield offset, block.shape[0], block.tobytes()


def assemble(blocks: Iterable[tuple[int, int, bytes]], n: int, name: str) -> Matrix:
    """Rebuild an n x n product from row blocks; ValueError on gaps, overlaps or bad sizes."""
    return assemble_rows(blocks, n, name).array()


@dataclass(frozen=True)
class RowBlocks:
    """An n x n product as the consecutive blocks of rows it arrived in, in row order: views of
    the received bytes, no copy (:func:`assemble_rows`). The verifier hashes and checks it a
    block at a time (:func:`digest`, ``verification.freivalds``); :meth:`array` copies it into
    one matrix."""

    blocks: tuple[Matrix, ...]
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def size(self) -> int:
        return self.n * self.n

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.blocks[0].dtype

    def max(self) -> Any:
        """The largest entry; NaN if any entry is NaN (as ``ndarray.max``)."""
        return np.max(np.array([block.max() for block in self.blocks]))

    def min(self) -> Any:
        """The smallest entry; NaN if any entry is NaN (as ``ndarray.min``)."""
        return np.min(np.array([block.min() for block in self.blocks]))

    def array(self) -> Matrix:
        matrix: Matrix = np.concatenate(self.blocks)
        return matrix


def assemble_rows(blocks: Iterable[tuple[int, int, bytes]], n: int, name: str) -> RowBlocks:
    """The n x n product of these row blocks, without copying them (:class:`RowBlocks`);
    ValueError on gaps, overlaps or bad sizes."""
    target = precision(name).accumulator.newbyteorder("<")
    native = target.newbyteorder("=")
    views: list[tuple[int, Matrix]] = []
    seen = np.zeros(n, dtype=bool)
    for offset, rows, data in blocks:
        if offset < 0 or rows < 1 or offset + rows > n:
            raise ValueError(f"block rows {offset}..{offset + rows} outside 0..{n}")
        if len(data) != rows * n * target.itemsize:
            raise ValueError(f"block at row {offset} has {len(data)} bytes, not {rows}x{n}")
        if seen[offset : offset + rows].any():
            raise ValueError(f"block at row {offset} overlaps an earlier block")
        seen[offset : offset + rows] = True
        view = np.frombuffer(data, dtype=target).reshape(rows, n)
        views.append((offset, view.astype(native, copy=False)))  # a copy only if big-endian
    if not seen.all():
        raise ValueError(f"rows missing from the product: {int((~seen).sum())} of {n}")
    views.sort(key=lambda item: item[0])
    return RowBlocks(tuple(view for _, view in views), n)
