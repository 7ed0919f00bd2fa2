"""The blocked check (``verification.freivalds._sweep``) gives the answers of the straightforward
float64 formula: the same worst ratios, for every precision, one product and composite steps,
X in any layout or derived from the committed product; and the verifier's own rounding stays
far below the bound. The pieces it reads a block at a time (``boundary_factor``,
``scaled_rounded_rows``, ``input_matrix``, an opened product kept as the row blocks it arrived
in) give the bits of the whole-matrix formulas.

No database: pure numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.challenge import (
    INPUT_HALF_WIDTH,
    StepTerm,
    assemble_rows,
    boundary_factor,
    chain,
    digest,
    input_matrix,
    inputs,
    link_signs,
    multiply,
    next_input,
    precision,
    row_blocks,
    scaled_rounded,
    scaled_rounded_rows,
    step,
)
from verification import freivalds
from verification.freivalds import LAMBDA, StepChecker

PRECISIONS = ["bf16", "fp16", "fp32", "fp64"]


def h(c: np.ndarray, name: str, step: int = 1, challenge_id: str = "c") -> bytes:
    """The commitment of C as step ``step`` of device 0."""
    return digest(c, name, challenge_id=challenge_id, device=0, step=step)


def term(c: np.ndarray, b: np.ndarray, name: str, step: int = 1, cid: str = "c") -> StepTerm:
    """The term B D(h) of the input that follows C."""
    return StepTerm.of(b, h(c, name, step, cid), name)


def reference(
    x: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    name: str,
    r: np.ndarray,
    inner: int = 1,
    signs: np.ndarray | None = None,
) -> np.ndarray:
    """The worst residual / bound ratio of each vector, straight from the formulas (the check
    as it was before it went blocked: whole float64 copies, one product each)."""
    n = x.shape[0]
    x64, b64, c64 = (np.asarray(m, dtype=np.float64) for m in (x, b, c))
    b2 = (b64 * b64).mean(axis=1)
    scale = LAMBDA * math.sqrt(n) * precision(name).unit_roundoff * n
    tiny = np.finfo(np.float64).tiny
    if inner == 1:
        expected = x64 @ (b64 @ r)
        bound = scale * np.sqrt((x64 * x64) @ b2)[:, None] + tiny
    else:
        assert signs is not None
        d64 = np.asarray(signs, dtype=np.float64)  # not float32: s * d would round s
        # (Y_{inner-1} B) r with Y_0 = X, Y_j = s D_j (Y_{j-1} B)^T, applied right to left.
        s = 1.0 / math.sqrt(n)
        # Y_m v (or Y_m^T v), by recursion on m.

        def apply(m: int, v: np.ndarray, transposed: bool) -> np.ndarray:
            if m == 0:
                return x64.T @ v if transposed else x64 @ v
            d = d64[m - 1][:, None]
            if transposed:  # Y_m^T v = s Y_{m-1} (B D_m v)
                return s * apply(m - 1, b64 @ (d * v), False)
            return s * d * (b64.T @ apply(m - 1, v, True))  # Y_m v = s D_m B^T (Y_{m-1}^T v)

        expected = apply(inner - 1, b64 @ r, False)
        rho = math.sqrt(n * float(b2.mean())) * math.sqrt(float((x64 * x64).mean()))
        rho = max(rho, math.sqrt(float((expected * expected).mean()) / n))
        u_in = precision(name).input_roundoff
        rounding = LAMBDA * math.sqrt(n) * math.sqrt(inner - 1) * u_in * rho
        bound = scale * rho + rounding + tiny
    ratio: np.ndarray = (np.abs(c64 @ r - expected) / bound).max(axis=0)
    return ratio


def tolerance(name: str) -> float:
    """How far two float64 evaluations of one ratio may differ, in units of the bound: about
    1e-12 where the products are exact in float64; in FP64 the verifier's float64 sums round
    as much as the agent's honest ones (a few % of the bound at n = 200; see
    test_the_verifiers_own_rounding_is_below_a_percent_of_the_bound), so the orders of two
    float64 evaluations show there."""
    return 0.05 if name == "fp64" else 1e-9


def ratios(checks: list[freivalds.VectorCheck]) -> np.ndarray:
    return np.array([check.worst_ratio for check in checks])


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 rows at n = 200: many blocks and a short last one."""
    monkeypatch.setattr(freivalds, "BLOCK_BYTES", 8 * 200 * 7)


def honest_and_wrong(
    name: str, n: int, inner: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """C_1, B, the signs, and C_2 honest, with one entry off by one, and with 5 % noise."""
    a, b = inputs(seed, n, name)
    c1 = step(a, b, name, inner, link_signs(seed, n, inner, name, step=1))
    signs = link_signs(seed, n, inner, name, step=2)  # step 2's, the step checked below
    c2 = step(next_input(c1, name, b, h(c1, name)), b, name, inner, signs)
    rng = np.random.default_rng(seed)
    off = c2.copy()
    off[rng.integers(n), rng.integers(n)] += 1.0
    noisy = c2 * (1 + rng.standard_normal(c2.shape).astype(c2.dtype) * 5e-2)
    return c1, b, signs, [c2, off, noisy]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("inner", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_blocked_check_equals_the_float64_formula(name: str, inner: int, seed: int) -> None:
    n = 200
    c1, b, signs, answers = honest_and_wrong(name, n, inner, seed)
    x_rows = scaled_rounded(c1, name, term(c1, b, name))  # X_1 = x_rows.T
    x_copy = np.ascontiguousarray(x_rows.T)
    checker = StepChecker(b, name, k=8, rng=np.random.default_rng(seed))
    s = signs if inner > 1 else None
    for c in answers:
        want = reference(x_copy, b, c, name, checker.r, inner, signs)
        # X as a transposed view, as a row-major copy, and derived from C_1 block by block.
        for got in (
            ratios(checker.check(x_rows.T, c, inner, s)),
            ratios(checker.check(x_copy, c, inner, s)),
            ratios(
                checker.verdict(
                    checker.product_side(c),
                    checker.input_side_of_product(c1, h(c1, name), inner, s),
                )
            ),
        ):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=tolerance(name))
        # C_1 read once for its own C r and for X_1's side.
        cr1, side = checker.product_pass(c1, h(c1, name), inner, s, checked=True)
        assert cr1 is not None
        exact = np.asarray(c1, dtype=np.float64) @ checker.r
        np.testing.assert_allclose(cr1, exact, rtol=1e-12, atol=1e-12 * np.abs(exact).max())
        np.testing.assert_allclose(
            ratios(checker.verdict(checker.product_side(c), side)),
            want,
            rtol=1e-9,
            atol=tolerance(name),
        )
    # The answers themselves: honest far below 1, an entry off by one and noise far above.
    honest, off, noisy = (reference(x_copy, b, c, name, checker.r, inner, signs) for c in answers)
    assert honest.max() < 0.5 and noisy.min() > 1.0


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", PRECISIONS)
def test_the_first_step_and_the_per_row_bound_equal_the_formula(name: str) -> None:
    n = 200
    a, b = inputs(9, n, name)
    c = multiply(a, b, name)
    checker = StepChecker(b, name, k=4, rng=np.random.default_rng(3))
    np.testing.assert_allclose(
        ratios(checker.check(a, c)),
        reference(a, b, c, name, checker.r),
        rtol=1e-9,
        atol=tolerance(name),
    )
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rho = np.sqrt((a64 * a64) @ (b64 * b64).mean(axis=1))
    np.testing.assert_allclose(checker.bound(a), checker.scale * rho, rtol=1e-12)
    np.testing.assert_allclose(checker.br, b64 @ checker.r, rtol=1e-12)


@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("inner", [1, 3])
def test_the_verifiers_own_rounding_is_below_a_percent_of_the_bound(name: str, inner: int) -> None:
    """C r and the verifier's side, in float64 by blocks, against the same sums in extended
    precision (numpy's longdouble: 64-bit significands on x86, 11 more bits than float64): the
    verifier's own error is a tiny fraction of the bound, so its verdict is the formula's."""
    if np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant:
        pytest.skip("no extended precision on this platform")
    n = 256
    c1, b, signs, (c2, _, _) = honest_and_wrong(name, n, inner, 4)
    checker = StepChecker(b, name, k=8, rng=np.random.default_rng(4))
    s = signs if inner > 1 else None
    cr = checker.product_side(c2)
    side = checker.input_side_of_product(c1, h(c1, name), inner, s)
    ld = np.longdouble
    x = np.asarray(scaled_rounded(c1, name, term(c1, b, name)).T, dtype=ld)
    bl, r = np.asarray(b, dtype=ld), checker.r.astype(ld)
    cr_exact = np.asarray(c2, dtype=ld) @ r
    hs = ld(1) / np.sqrt(ld(n))
    if inner == 1:
        expected_exact = x @ (bl @ r)
    else:
        # inner = 3: Y_2 (B r) = s D_2 B^T (Y_1^T (B r)), Y_1^T w = s X (B D_1 w).
        d1, d2 = (np.asarray(signs[j], dtype=ld)[:, None] for j in (0, 1))
        expected_exact = hs * d2 * (bl.T @ (hs * (x @ (bl @ (d1 * (bl @ r))))))
    bound = np.asarray(side.bound, dtype=np.float64)
    own = max(
        float(np.max(np.abs(cr - cr_exact.astype(np.float64)) / bound)),
        float(np.max(np.abs(side.expected - expected_exact.astype(np.float64)) / bound)),
    )
    if name == "fp64":
        # FP64 products are not exact in float64: the verifier's sums round like the agent's,
        # about 1 / (LAMBDA sqrt(n)) of the bound, in the whole-matrix formula as in blocks.
        x64, b64 = np.asarray(x, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if inner == 1:
            whole = x64 @ (b64 @ checker.r)
            before = float(np.max(np.abs(whole - expected_exact.astype(np.float64)) / bound))
            assert own < max(0.05, 2 * before), (own, before)
        assert own < 0.05, own
    else:
        assert own < 0.01, own


@pytest.mark.parametrize("name", PRECISIONS)
def test_scaled_rounded_rows_give_the_bits_of_next_input(name: str) -> None:
    acc = precision(name).accumulator
    rng = np.random.default_rng(6)
    n = 96
    cases = [
        rng.standard_normal((n, n)) * 40,  # the usual size: no shift
        rng.standard_normal((n, n)) * 3e4,  # a large peak: shifted down
        rng.standard_normal((n, n)) * 1e-3,  # a small one: shifted up
    ]
    with_nan = rng.standard_normal((n, n))
    with_nan[3, 4] = np.nan
    cases.append(with_nan)
    b = inputs(6, n, name)[1]
    for case in cases:
        c = case.astype(acc)
        whole = np.ascontiguousarray(next_input(c, name, b, h(c, name)).astype(acc).T)
        factor = boundary_factor(c, name)
        t = term(c, b, name)
        rows = np.concatenate(
            [scaled_rounded_rows(c[i : i + 10], n, name, factor, t, i) for i in range(0, n, 10)]
        )
        np.testing.assert_array_equal(rows.view(np.uint8), whole.view(np.uint8))
        np.testing.assert_array_equal(
            scaled_rounded(c, name, t).view(np.uint8), rows.view(np.uint8)
        )


@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("n", [1, 7, 3000])
def test_input_matrix_in_blocks_gives_the_bits_of_one_draw(name: str, n: int) -> None:
    # n = 3000: blocks of 43 rows, the last one short.
    values = np.random.default_rng([5, 1]).random((n, n))
    values *= 2.0 * INPUT_HALF_WIDTH
    values -= INPUT_HALF_WIDTH
    whole = values.astype(precision(name).input)
    np.testing.assert_array_equal(input_matrix(5, 1, n, name).view(np.uint8), whole.view(np.uint8))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("inner", [1, 2])
def test_a_product_checked_as_the_blocks_it_arrived_in_equals_the_array(
    name: str, inner: int
) -> None:
    """The verifier keeps an opened product as its row blocks (no copy): the same digest, the
    same boundary factor and the same check as the assembled array; received out of order."""
    n = 200
    c1, b, signs, (c2, _, _) = honest_and_wrong(name, n, inner, 3)
    c1[17, 3] = c1.max() * 4  # a peak in one block: shifted
    s = signs if inner > 1 else None
    # 13 rows a message (the protocol's 1 MiB at n = 200 would be one block).
    parts = {key: list(row_blocks(c, name, 13 * n * c.itemsize)) for key, c in ((1, c1), (2, c2))}
    received = {key: assemble_rows(reversed(p), n, name) for key, p in parts.items()}
    assert len(received[1].blocks) == 16
    np.testing.assert_array_equal(received[1].array(), c1)
    assert digest(received[1], name, challenge_id="c", device=0, step=1) == digest(
        c1, name, challenge_id="c", device=0, step=1
    )
    assert boundary_factor(received[1], name) == boundary_factor(c1, name)
    assert boundary_factor(received[1], name) is not None
    checker = StepChecker(b, name, k=8, rng=np.random.default_rng(3))
    cr, side = checker.product_pass(received[1], h(c1, name), inner, s, checked=True)
    cr_array, side_array = checker.product_pass(c1, h(c1, name), inner, s, checked=True)
    # The same float64 sums; BLAS may order them by the pieces' shapes.
    for got, want in ((cr, cr_array), (side.expected, side_array.expected)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(
        ratios(checker.verdict(checker.product_side(received[2]), side)),
        ratios(checker.verdict(checker.product_side(c2), side)),
        rtol=1e-9,
        atol=tolerance(name),
    )


def test_the_largest_entry_of_row_blocks_is_nan_when_one_is() -> None:
    c = np.arange(16, dtype=np.float32).reshape(4, 4)
    c[3, 1] = np.nan
    blocks = assemble_rows(row_blocks(c, "fp32", 4 * 4), 4, "fp32")
    assert len(blocks.blocks) == 4
    assert np.isnan(blocks.max()) and np.isnan(blocks.min())
    assert boundary_factor(blocks, "fp32") is None


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", PRECISIONS)
@pytest.mark.parametrize("inner", [1, 3, 4])
def test_checking_a_chains_steps_together_equals_checking_each(name: str, inner: int) -> None:
    """``check_steps`` (what the service runs: shared passes, links applied to all the steps at
    once) gives each step's check on its own, and a wrong product fails its own step and the
    next (whose input it gives)."""
    n, seed = 200, 8
    products = list(chain(seed, n, name, 6, inner))
    products[3] = products[3] * np.asarray(1.25, dtype=products[3].dtype)  # C_4 is wrong
    a, b = inputs(seed, n, name)

    def signs(t: int) -> np.ndarray:
        return link_signs(seed, n, inner, name, step=t)

    for opened in ([1, 2, 6], [1, 4, 5, 6], [2, 4, 6], [3, 4]):
        checker = StepChecker(b, name, k=8, rng=np.random.default_rng(seed))
        got = checker.check_steps(
            opened,
            lambda t: products[t - 1],
            lambda t: h(products[t - 1], name, t, "chain"),
            lambda: a,
            inner,
            signs if inner > 1 else None,
        )
        assert list(got) == opened
        for t in opened:
            x = a
            if t > 1:
                x = scaled_rounded(
                    products[t - 2], name, term(products[t - 2], b, name, t - 1, "chain")
                ).T
            alone = ratios(
                checker.check(x, products[t - 1], inner, signs(t) if inner > 1 else None)
            )
            np.testing.assert_allclose(ratios(got[t]), alone, rtol=1e-9, atol=tolerance(name))
            # C_4 is not X_3 B, and C_5 is not X_4 B for the X_4 the committed C_4 gives.
            assert all(v.passed for v in got[t]) == (t not in (4, 5)), (t, ratios(got[t]))
