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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.challenge import (
    Matrix,
    RowBlocks,
    StepTerm,
    boundary_factor,
    precision,
    scaled_rounded_rows,
)

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


# The checks read each n x n matrix a block of rows at a time, converted to float64 in a buffer
# of about this size that stays in the core's cache (L2: 512 KiB to 2 MiB on current x86), and
# multiply the block there: one pass over the matrix in its own type, instead of writing and
# reading back a float64 copy of it (two to three times its size) and, for X = C^T, a
# transposing copy. The sums are the same float64 sums in another order. (1 MiB: about a
# core's L2 here; smaller blocks cost more Python per pass, larger ones fall out of cache.)
BLOCK_BYTES = 1024 * 1024


B64_MAX_BYTES = 8 * 1024 * 1024  # StepChecker keeps a float64 B up to this size (n = 1024)


def _rows_per_block(n: int) -> int:
    return max(1, BLOCK_BYTES // (8 * n))


@dataclass
class _Sums:
    """What one pass (``_sweep``) over a matrix M (n x n) yields; None where not asked."""

    raw_right: npt.NDArray[np.float64] | None = None  # M @ raw_right, before the transform
    right: npt.NDArray[np.float64] | None = None  # T(M) @ right
    left: npt.NDArray[np.float64] | None = None  # T(M)^T @ left
    sq_right: npt.NDArray[np.float64] | None = None  # (T(M) o T(M)) @ w
    sq_left: npt.NDArray[np.float64] | None = None  # (T(M) o T(M))^T @ w
    sq_total: float = 0.0  # sum of T(M)^2


def _row_chunks(m: Matrix | RowBlocks, rows: int) -> Iterator[tuple[int, Any]]:
    """(first row, rows) pieces of M of at most ``rows`` rows, views: of the array, or of the
    blocks a product arrived in."""
    parts = m.blocks if isinstance(m, RowBlocks) else (m,)
    start = 0
    for part in parts:
        for i in range(0, part.shape[0], rows):
            yield start + i, part[i : i + rows]
        start += part.shape[0]


def _sweep(
    m: Matrix | RowBlocks,
    *,
    raw_right: npt.NDArray[np.float64] | None = None,
    transform: Callable[[Matrix, int], Matrix] | None = None,
    right: npt.NDArray[np.float64] | None = None,
    left: npt.NDArray[np.float64] | None = None,
    sq_right: npt.NDArray[np.float64] | None = None,
    sq_left: npt.NDArray[np.float64] | None = None,
    sq_total: bool = False,
    work: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> _Sums:
    """One pass over M's rows in blocks of float64 (``BLOCK_BYTES``): products of the block
    with the asked vectors, accumulated exactly as the whole float64 products would be, up to
    the order of the float64 additions. ``raw_right`` multiplies M's own entries; the rest
    multiply T(M) (``transform`` applied to each block of rows and its first row's index: it
    must act entry by entry).
    ``work``: two float64 buffers of (``_rows_per_block``, n) or more rows, reused."""
    n_rows, n_cols = m.shape
    rows = min(_rows_per_block(n_cols), n_rows)
    out = _Sums()
    if raw_right is not None:
        out.raw_right = np.empty((n_rows, raw_right.shape[1]))
    if right is not None:
        out.right = np.empty((n_rows, right.shape[1]))
    if left is not None:
        out.left = np.zeros((n_cols, left.shape[1]))
        part = np.empty_like(out.left)
    if sq_right is not None:
        out.sq_right = np.empty(n_rows)
    if sq_left is not None:
        out.sq_left = np.zeros(n_cols)
    squares = sq_right is not None or sq_left is not None
    transformed = right is not None or left is not None or squares or sq_total
    if work is None or work[0].shape[0] < rows or work[0].shape[1] != n_cols:
        work = (np.empty((rows, n_cols)), np.empty((rows, n_cols)) if squares else np.empty(0))
    buffer, square = work
    total = 0.0
    for i, source in _row_chunks(m, rows):
        j = i + source.shape[0]
        raw: Any = None
        if out.raw_right is not None and raw_right is not None:
            raw = _as_float64(source, buffer[: j - i])
            np.matmul(raw, raw_right, out=out.raw_right[i:j])
        if not transformed:
            continue
        if transform is not None:
            block: Any = _as_float64(transform(source, i), buffer[: j - i])
        else:
            block = raw if raw is not None else _as_float64(source, buffer[: j - i])
        if out.right is not None and right is not None:
            np.matmul(block, right, out=out.right[i:j])
        if out.left is not None and left is not None:
            np.matmul(block.T, left[i:j], out=part)
            out.left += part
        if squares:
            sq = square[: j - i]
            np.multiply(block, block, out=sq)
            if out.sq_right is not None and sq_right is not None:
                np.matmul(sq, sq_right, out=out.sq_right[i:j])
            if out.sq_left is not None and sq_left is not None:
                out.sq_left += sq_left[i:j] @ sq
        if sq_total:  # one dot product, no array of squares
            total += float(np.vdot(block, block))
    out.sq_total = total
    return out


def _as_float64(rows: Any, buffer: npt.NDArray[np.float64]) -> Any:
    """``rows`` in float64: as they are when they already are, else widened into ``buffer``
    (exact: every input and accumulator type fits in float64)."""
    if rows.dtype == np.float64:
        return rows
    np.copyto(buffer, rows)
    return buffer


@dataclass
class InputSide:
    """The verifier's side of one checked step, from X and B only (never from the agent's C):
    ``expected`` = (X B ... B) r, exact in float64 (n x k), and the residual bound (a column
    of n rows for one product, a scalar for a composite step)."""

    expected: npt.NDArray[np.float64]
    bound: Any


class StepChecker:
    """Freivalds on many steps that share B (one device's chain): B's side is computed once.

    The k sign vectors are drawn once per device, after every commitment arrived; each step's
    check then costs one pass over C (``product_side``: C r) and one over X (``input_side``,
    ``input_side_of_product``: X (B r) and the bound), each in blocks that stay in cache
    (``_sweep``), plus, in a composite step, one pass over B per link. When C_t is both checked
    and the input of the next checked step, ``product_pass`` reads it once for both.
    """

    def __init__(self, b: Matrix, name: str, *, k: int, rng: np.random.Generator) -> None:
        n = b.shape[0]
        if b.shape != (n, n):
            raise ValueError("B must be n x n")
        self.n, self.name, self.k = n, name, k
        p = precision(name)
        # B held exactly in the accumulator type (16-bit inputs widen exactly to float32):
        # half the bytes of float64 for every pass over it.
        self._b: Any = np.ascontiguousarray(b, dtype=p.accumulator)
        # The links of composite steps pass over B once each. Up to B64_MAX_BYTES a float64
        # copy of B, which stays in the last-level cache, is faster than converting blocks of
        # B each time; above, it is not (it is read from memory at twice the bytes).
        self._b64: Any = (
            np.asarray(self._b, dtype=np.float64) if 8 * n * n <= B64_MAX_BYTES else None
        )
        rows = min(_rows_per_block(n), n)
        self._work = (np.empty((rows, n)), np.empty((rows, n)))  # every pass's blocks
        self.r = rng.choice(np.array([-1.0, 1.0]), size=(n, k))
        # mean_j(B_kj^2): rho_i^2 = sum_k X_ik^2 mean_j(B_kj^2) (module docstring).
        sums = _sweep(
            self._b if self._b64 is None else self._b64,
            right=self.r,
            sq_right=np.full(n, 1.0 / n),
            work=self._work,
        )
        assert sums.right is not None and sums.sq_right is not None
        self.br: npt.NDArray[np.float64] = sums.right
        self.b2: npt.NDArray[np.float64] = sums.sq_right
        self.scale = LAMBDA * math.sqrt(n) * p.unit_roundoff * n

    def _b_times(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._b64 is not None:
            product: npt.NDArray[np.float64] = self._b64 @ v
            return product
        result = _sweep(self._b, right=v, work=self._work).right
        assert result is not None
        return result

    def _bt_times(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._b64 is not None:
            product: npt.NDArray[np.float64] = self._b64.T @ v
            return product
        result = _sweep(self._b, left=v, work=self._work).left
        assert result is not None
        return result

    def bound(self, x: Matrix) -> npt.NDArray[np.float64]:
        """The residual bound of each row for input X."""
        bound: npt.NDArray[np.float64] = self.input_side(x).bound[:, 0]
        return bound

    def check(
        self, x: Matrix, c: Matrix, inner: int = 1, signs: Matrix | None = None
    ) -> list[VectorCheck]:
        """Check C = X @ B (``inner`` = 1), or the composite step of ``inner`` chained products
        with the links' ``signs`` (``agent.challenge.step``, ``link_signs``); one VectorCheck
        per vector.

        X may be any view (e.g. ``scaled_rounded(C_{t-1}).T``: read as the transpose of a
        row-major matrix, no copy). A non-finite entry of C makes its component of C r
        non-finite, and the check fails.
        """
        n = self.n
        if x.shape != (n, n) or c.shape != (n, n):
            raise ValueError("X and C must be n x n")
        side = self.input_side(x, inner, signs)
        return self.verdict(self.product_side(c), side)

    def product_side(self, c: Matrix | RowBlocks) -> npt.NDArray[np.float64]:
        """C r in float64 (exact products; every input and accumulator type fits)."""
        if c.shape != (self.n, self.n):
            raise ValueError("C must be n x n")
        cr = _sweep(c, raw_right=self.r, work=self._work).raw_right
        assert cr is not None
        return cr

    def input_side(self, x: Matrix, inner: int = 1, signs: Matrix | None = None) -> InputSide:
        """The verifier's side of the check of a step whose input is X (any layout)."""
        plan = self._link_plans(inner, [signs])
        return self._finish([self._partial_of_matrix(x, plan, 0)], plan)[0]

    def term(self, commitment: bytes) -> StepTerm:
        """The term B D(h) of the next input after the step committed as ``commitment``."""
        return StepTerm.of(self._b, commitment, self.name)

    def input_side_of_product(
        self,
        product: Matrix | RowBlocks,
        commitment: bytes,
        inner: int = 1,
        signs: Matrix | None = None,
    ) -> InputSide:
        """The side of the step whose input is X = ``next_input(product, B, commitment)``:
        the committed C_{t-1} scaled, shifted, given its term and rounded a block of rows at a
        time (the same entries as ``scaled_rounded(product)``), read as its transpose: neither
        a rounded nor a transposed copy of the matrix is made."""
        return self.product_pass(product, commitment, inner, signs, checked=False)[1]

    def product_pass(
        self,
        product: Matrix | RowBlocks,
        commitment: bytes,
        inner: int = 1,
        signs: Matrix | None = None,
        *,
        checked: bool,
    ) -> tuple[npt.NDArray[np.float64] | None, InputSide]:
        """One pass over the committed C_t for both of its uses: C_t r when step t is checked
        (``checked``), and the side of step t + 1 (whose links have ``signs``), whose input is
        next_input(C_t, B, ``commitment``)."""
        plan = self._link_plans(inner, [signs])
        term = self.term(commitment)
        partial = self._partial_of_product(product, plan, 0, checked=checked, term=term)
        return partial.raw, self._finish([partial], plan)[0]

    def check_steps(
        self,
        opened: list[int],
        product: Callable[[int], Matrix | RowBlocks],
        commitment: Callable[[int], bytes],
        first_input: Callable[[], Matrix],
        inner: int = 1,
        signs: Callable[[int], Matrix] | None = None,
    ) -> dict[int, list[VectorCheck]]:
        """Check the steps ``opened`` (increasing) of one chain whose committed products are
        ``product(t)`` with commitments ``commitment(t)``, whose first input is
        ``first_input()`` (A; asked only when step 1 is checked) and whose step t has the link
        signs ``signs(t)`` (``agent.challenge.link_signs``; composite steps only): the checks
        of ``check(next_input(C_{t-1}, B, h_{t-1}), C_t, inner, signs(t))`` for each, done
        with each matrix
        read once (a C_t that is both checked and the next checked step's input serves both in
        one pass) and, in composite steps, every link applied to all the steps' vectors side
        by side (one pass over B per link, not one per link and step)."""
        if inner > 1 and signs is None:
            raise ValueError("a composite step needs its (inner - 1) x n link signs")
        plan = self._link_plans(
            inner, [signs(t) if signs is not None and inner > 1 else None for t in opened]
        )
        at = {t: i for i, t in enumerate(opened)}
        partials: dict[int, _Partial] = {}
        crs: dict[int, npt.NDArray[np.float64]] = {}
        for t in opened:
            if t not in partials:
                if t == 1:
                    partials[t] = self._partial_of_matrix(first_input(), plan, at[t])
                else:
                    partials[t] = self._partial_of_product(
                        product(t - 1),
                        plan,
                        at[t],
                        checked=False,
                        term=self.term(commitment(t - 1)),
                    )
            if t + 1 in at:  # C_t r and the side of step t + 1 in one pass
                partials[t + 1] = self._partial_of_product(
                    product(t), plan, at[t + 1], checked=True, term=self.term(commitment(t))
                )
                cr = partials[t + 1].raw
                assert cr is not None
                crs[t] = cr
            else:
                crs[t] = self.product_side(product(t))
        sides = self._finish([partials[t] for t in opened], plan)
        return {t: self.verdict(crs[t], side) for t, side in zip(opened, sides, strict=True)}

    def verdict(self, cr: npt.NDArray[np.float64], side: InputSide) -> list[VectorCheck]:
        """Compare C r (``product_side``) with the verifier's side, vector by vector."""
        ratio = np.abs(cr - side.expected) / side.bound
        if not np.isfinite(ratio).all():
            return [VectorCheck(passed=False, worst_ratio=math.inf) for _ in range(self.k)]
        worst = ratio.max(axis=0)
        return [VectorCheck(passed=bool(w <= 1.0), worst_ratio=float(w)) for w in worst]

    def _partial_of_matrix(self, x: Matrix, plan: _LinkPlan, index: int) -> _Partial:
        if x.shape != (self.n, self.n):
            raise ValueError("X must be n x n")
        if not x.flags.c_contiguous and x.T.flags.c_contiguous:
            return self._partial(x.T, None, plan, index, transposed=True)
        return self._partial(x, None, plan, index, transposed=False)

    def _partial_of_product(
        self,
        product: Matrix | RowBlocks,
        plan: _LinkPlan,
        index: int,
        *,
        checked: bool,
        term: StepTerm,
    ) -> _Partial:
        if product.shape != (self.n, self.n):
            raise ValueError("C must be n x n")
        factor = boundary_factor(product, self.name)
        n, name = self.n, self.name

        def transform(rows: Matrix, start: int) -> Matrix:
            return scaled_rounded_rows(rows, n, name, factor, term, start)

        return self._partial(
            product,
            transform,
            plan,
            index,
            transposed=True,
            raw_right=self.r if checked else None,
        )

    def _partial(
        self,
        m: Matrix | RowBlocks,
        transform: Callable[[Matrix, int], Matrix] | None,
        plan: _LinkPlan,
        index: int,
        *,
        transposed: bool,
        raw_right: npt.NDArray[np.float64] | None = None,
    ) -> _Partial:
        """The pass over M for X = T(M)^T when ``transposed``, else T(M): X's product with the
        link plan's vector for step ``index`` of the plan, and the squares the bound needs."""
        inner = plan.inner
        v, v_transposed = plan.vectors[index], plan.transposed
        # X v is M^T v when X = M^T: a left product on M; X^T v is then a right one.
        on_left = transposed != v_transposed
        sums = _sweep(
            m,
            raw_right=raw_right,
            transform=transform,
            right=None if on_left else v,
            left=v if on_left else None,
            sq_right=self.b2 if inner == 1 and not transposed else None,
            sq_left=self.b2 if inner == 1 and transposed else None,
            sq_total=inner > 1,
            work=self._work,
        )
        y = sums.left if on_left else sums.right
        assert y is not None
        squares: Any = (sums.sq_left if transposed else sums.sq_right) if inner == 1 else None
        return _Partial(sums.raw_right, y, squares, sums.sq_total)

    def _finish(self, partials: list[_Partial], plan: _LinkPlan) -> list[InputSide]:
        """The sides of these steps (the plan's, in its order): the links after X (composite
        steps), applied to all the steps' vectors side by side, and the bounds."""
        n, tiny = self.n, np.finfo(np.float64).tiny
        if plan.inner == 1:
            return [
                InputSide(p.y, (self.scale * np.sqrt(p.squares) + tiny)[:, None]) for p in partials
            ]
        y = np.concatenate([p.y for p in partials], axis=1)
        s = 1.0 / math.sqrt(n)
        for j in reversed(plan.after):  # Y_j v = s D_j B^T (Y_{j-1} v)
            y = s * (plan.signs_of_link(j, self.k) * self._bt_times(y))
        sides = []
        for i, p in enumerate(partials):
            expected = y[:, i * self.k : (i + 1) * self.k]
            bound = self._composite_bound(p.sq_total / (n * n), plan.inner, expected)
            sides.append(InputSide(expected, bound))
        return sides

    def _link_plans(self, inner: int, signs: list[Matrix | None]) -> _LinkPlan:
        """The part of (Y_{inner-1} B) r that depends on B and the signs only, for each step
        (``signs``: each step's own link signs, in the order of the steps to check): the
        vectors that meet X (as X v, or X^T v when ``transposed``) and the links applied after
        it. Y_0 = X and Y_j = s D_j (Y_{j-1} B)^T (D_j = diag of the link's signs): one n x n
        by n x (k x steps) product per link plus O(n k) for D_j, without the intermediate
        roundings; iterative (a step may hold many links):

            Y_j v   = s D_j B^T (Y_{j-1}^T v)      Y_j^T v = s Y_{j-1} (B D_j v)
        """
        if inner == 1:
            return _LinkPlan(1, [self.br] * len(signs), False, [], np.empty((0, 0, self.n)))
        stacked = []
        for each in signs:
            if each is None or each.shape != (inner - 1, self.n):
                raise ValueError("a composite step needs its (inner - 1) x n link signs")
            stacked.append(np.asarray(each, dtype=np.float64))
        plan = _LinkPlan(inner, [], False, [], np.stack(stacked))  # (steps, inner - 1, n)
        s = 1.0 / math.sqrt(self.n)
        v = np.tile(self.br, (1, len(signs)))  # Y_{inner-1} (B r) for every step, side by side
        transposed = False
        for j in range(inner - 1, 0, -1):
            if transposed:  # Y_j^T v = s Y_{j-1} (B D_j v)
                v = s * self._b_times(plan.signs_of_link(j, self.k) * v)
            else:  # Y_j v = s D_j B^T (Y_{j-1}^T v)
                plan.after.append(j)
            transposed = not transposed
        plan.transposed = transposed
        plan.vectors = [v[:, i * self.k : (i + 1) * self.k] for i in range(len(signs))]
        return plan

    def _composite_bound(
        self, mean_x2: float, inner: int, expected: npt.NDArray[np.float64]
    ) -> Any:
        """The bound of a composite step: the accumulation term with the output rows' size
        taken as their mean, plus the intermediate roundings: each of the inner - 1 roundings
        to the input type moves an entry by at most u_in of its size, in random directions, and
        the links carry that to the output at the output's size, so R_i gains sqrt(inner - 1)
        u_in rho per sqrt(n) random signs (LAMBDA standard deviations of margin, as above).

        The output's size rho: a link keeps the size only on average (B / sqrt(n) has a
        spectral radius near 1, not 1), so over hundreds of links it drifts. rho is the larger
        of the input's (sqrt(n mean(B^2)) rms(X), ``mean_x2`` = mean(X^2)) and the one read
        from the verifier's *own* exact ``expected`` = C r (E[(C r)_i^2] = sum_j C_ij^2 =
        n rho^2 for random signs), never from the agent's C."""
        rho = math.sqrt(self.n * float(self.b2.mean())) * math.sqrt(mean_x2)
        if expected.size:
            rho = max(rho, math.sqrt(float((expected * expected).mean()) / self.n))
        u_in = precision(self.name).input_roundoff
        rounding = LAMBDA * math.sqrt(self.n) * math.sqrt(inner - 1) * u_in * rho
        return self.scale * rho + rounding + np.finfo(np.float64).tiny


@dataclass
class _LinkPlan:
    """The B-side of composite steps checked together (``StepChecker._link_plans``): per step,
    the vector that meets X; whether it meets X^T; the links applied after X; the steps' link
    signs, (steps, inner - 1, n)."""

    inner: int
    vectors: list[npt.NDArray[np.float64]]
    transposed: bool
    after: list[int]
    signs: npt.NDArray[np.float64]

    def signs_of_link(self, j: int, k: int) -> npt.NDArray[np.float64]:
        """D_j of every step, as the n x (k x steps) factor of the steps' vectors side by
        side."""
        expanded: npt.NDArray[np.float64] = np.repeat(self.signs[:, j - 1, :].T, k, axis=1)
        return expanded


@dataclass
class _Partial:
    """One pass's share of a step's side: C r when asked (``raw``), X v (before the links
    that follow X in a composite step), and X's squares (per row weighted by mean(B^2) for one
    product, their sum for a composite step)."""

    raw: npt.NDArray[np.float64] | None
    y: npt.NDArray[np.float64]
    squares: Any
    sq_total: float


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
