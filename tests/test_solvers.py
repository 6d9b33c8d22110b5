"""LSQR and LSMR against scipy, dense least squares and their own diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import lsr_scale as ls
from lsr_scale.operators import DiagonalOperator, LinearOperator, MatrixOperator

SOLVERS = {"lsmr": (ls.lsmr, spla.lsmr), "lsqr": (ls.lsqr, spla.lsqr)}
F64 = torch.float64


def with_singular_values(m, n, s, generator):
    """An m x n float64 matrix with the given singular values (len min(m, n))."""
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=generator, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=F64))
    return U @ torch.diag(torch.as_tensor(s, dtype=F64)) @ V.T


def gaussian(m, n, generator):
    """A well-conditioned m x n float64 matrix (cond about (1 + r) / (1 - r), r = sqrt(n/m))."""
    return torch.randn(m, n, generator=generator, dtype=F64) / math.sqrt(max(m, n))


def scipy_solve(name, A, b, **kw):
    """Run scipy's solver; return (x, istop, itn)."""
    kw = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    if name == "lsqr" and "maxiter" in kw:
        kw["iter_lim"] = kw.pop("maxiter")
    out = SOLVERS[name][1](A.numpy(), b.numpy(), **kw)
    return out[0], int(out[1]), int(out[2])


def rel(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def true_norms(A, b, x, damp=0.0, x0=None):
    """Recomputed ||[b - A x; damp (x - x0)]|| and ||A^T r - damp^2 (x - x0)||."""
    dx = x if x0 is None else x - x0
    r = b - A @ x
    normr = math.sqrt(float(r @ r) + damp**2 * float(dx @ dx))
    normar = float(torch.linalg.norm(A.T @ r - damp**2 * dx))
    return normr, normar


def problem(case, generator):
    """(A, b, kwargs, rtol) for the scipy comparison cases."""
    g = generator
    if case == "well":
        A = gaussian(200, 30, g)
        return A, torch.randn(200, generator=g, dtype=F64), dict(atol=1e-10, btol=1e-10), 1e-8
    if case == "ill":
        # cond 1e8 with clustered singular values: Krylov converges in a few steps, so the
        # comparison is not decided by rounding.
        s = torch.tensor([1.0, 1e-2, 1e-4, 1e-6, 1e-8]).repeat_interleave(8)
        A = with_singular_values(100, 40, s, g)
        kw = dict(atol=1e-12, btol=1e-12, conlim=1e12)
        return A, torch.randn(100, generator=g, dtype=F64), kw, 1e-6
    if case == "ill_conlim":
        s = torch.tensor([1.0, 1e-2, 1e-4, 1e-6, 1e-8]).repeat_interleave(8)
        A = with_singular_values(100, 40, s, g)
        kw = dict(atol=1e-12, btol=1e-12, conlim=1e3)
        # The iterate where the conlim test fires is itself ill-determined (scipy's own x moves
        # by O(1) when b is perturbed by 1e-15), so only istop and itn are compared.
        return A, torch.randn(100, generator=g, dtype=F64), kw, None
    if case == "under":
        A = gaussian(20, 80, g)
        return A, torch.randn(20, generator=g, dtype=F64), dict(atol=1e-10, btol=1e-10), 1e-8
    if case == "damped":
        A = with_singular_values(60, 30, torch.logspace(0, -4, 30), g)
        kw = dict(damp=0.1, atol=1e-10, btol=1e-10)
        return A, torch.randn(60, generator=g, dtype=F64), kw, 1e-8
    if case == "x0":
        A = gaussian(200, 30, g)
        b = torch.randn(200, generator=g, dtype=F64)
        kw = dict(x0=torch.randn(30, generator=g, dtype=F64), atol=1e-10, btol=1e-10)
        return A, b, kw, 1e-8
    if case == "zero_column":
        A = gaussian(200, 30, g)
        A[:, 7] = 0.0
        return A, torch.randn(200, generator=g, dtype=F64), dict(atol=1e-10, btol=1e-10), 1e-8
    if case == "maxiter":
        A = gaussian(200, 30, g)
        kw = dict(atol=1e-14, btol=1e-14, maxiter=6)
        return A, torch.randn(200, generator=g, dtype=F64), kw, 1e-8
    raise AssertionError(case)


CASES = ["well", "ill", "ill_conlim", "under", "damped", "x0", "zero_column", "maxiter"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_matches_scipy(name, case, generator):
    A, b, kw, rtol = problem(case, generator)
    res = SOLVERS[name][0](A, b, **kw)
    xs, istop, itn = scipy_solve(name, A, b, **kw)
    assert int(res.istop) == istop
    assert abs(res.itn - itn) <= max(2, 0.05 * itn)
    if rtol is not None:
        assert rel(res.x.numpy(), xs) <= rtol
    if case == "zero_column":
        assert res.x[7] == 0.0


@pytest.mark.parametrize("case", ["well", "under", "damped", "x0", "zero_column", "maxiter"])
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_reported_norms_are_true(name, case, generator):
    A, b, kw, _ = problem(case, generator)
    res = SOLVERS[name][0](A, b, **kw)
    normr, normar = true_norms(A, b, res.x, kw.get("damp", 0.0), kw.get("x0"))
    scale = float(torch.linalg.norm(A)) * float(torch.linalg.norm(b))
    assert res.normr == pytest.approx(normr, rel=1e-6, abs=1e-9 * float(torch.linalg.norm(b)))
    assert abs(res.normar - normar) <= 1e-7 * scale
    assert res.num_matvecs == res.itn + (kw.get("x0") is not None)
    assert res.num_rmatvecs == res.itn + 1
    hist = res.history
    assert hist["normr"].shape == (res.itn,) and hist["normar"].shape == (res.itn,)
    assert hist["normr"].device.type == "cpu"
    assert float(hist["normr"][-1]) == res.normr
    assert float(hist["normar"][-1]) == res.normar
    if name == "lsmr":  # scipy's lsmr reports ||x|| (x0 included)
        assert res.normx == pytest.approx(float(torch.linalg.norm(res.x)), rel=1e-12)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_result_type(name, generator):
    A, b, kw, _ = problem("well", generator)
    res = SOLVERS[name][0](A, b, **kw)
    assert isinstance(res, ls.SolverResult)
    assert isinstance(res.istop, ls.StopReason) and res.converged
    for f in ("normr", "normar", "norma", "conda", "normx"):
        assert isinstance(getattr(res, f), float)
    assert isinstance(res.itn, int)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_inputs_unchanged(name, generator):
    A, b, kw, _ = problem("x0", generator)
    b0, x00 = b.clone(), kw["x0"].clone()
    res = SOLVERS[name][0](A, b, **kw)
    assert torch.equal(b, b0) and torch.equal(kw["x0"], x00)
    assert res.x.data_ptr() not in (b.data_ptr(), kw["x0"].data_ptr())
    M = DiagonalOperator(torch.ones(30, dtype=F64))
    SOLVERS[name][0](A, b, damp=0.3, M=M, x0=kw["x0"], maxiter=5)
    assert torch.equal(b, b0) and torch.equal(kw["x0"], x00)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_b_zero(name, generator):
    A = torch.randn(10, 4, generator=generator, dtype=F64)
    b = torch.zeros(10, dtype=F64)
    for x0 in (None, torch.randn(4, generator=generator, dtype=F64)):
        for maxiter in (None, 0):
            res = SOLVERS[name][0](A, b, x0=x0, maxiter=maxiter)
            assert res.istop == ls.StopReason.ZERO_RHS and res.itn == 0
            assert torch.equal(res.x, torch.zeros(4, dtype=F64))
            assert res.normar == 0.0
    # x0 already exact: x = x0, istop 0.
    x0 = torch.randn(4, generator=generator, dtype=F64)
    res = SOLVERS[name][0](A, A @ x0, x0=x0)
    assert res.istop == 0 and res.itn == 0 and torch.equal(res.x, x0) and res.x is not x0
    # A^T b = 0 (b orthogonal to the range of A): x = 0 is the least-squares solution.
    A2 = torch.zeros(3, 2, dtype=F64)
    A2[0, 0] = A2[1, 1] = 1.0
    res = SOLVERS[name][0](A2, torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert res.istop == 0 and torch.equal(res.x, torch.zeros(2, dtype=F64))
    assert res.normr == 1.0


def scipy_numbers(name, A, b, **kw):
    """scipy's (x, istop, itn, normr, normar, norma, conda, normx) in lsr_scale's order."""
    kw = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    if name == "lsmr":
        return spla.lsmr(A.numpy(), b.numpy(), **kw)
    kw["iter_lim"] = kw.pop("maxiter")
    x, istop, itn, _, r2norm, anorm, acond, arnorm, xnorm, _ = spla.lsqr(A.numpy(), b.numpy(), **kw)
    return x, istop, itn, r2norm, arnorm, anorm, acond, xnorm


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_maxiter_zero_matches_scipy(name, generator):
    # scipy 1.x returns istop 0 and itn 0 with maxiter=0 (lsmr) / iter_lim=0 (lsqr), x = x0
    # or zeros, and the numbers of the first bidiagonalization step.
    A = torch.randn(10, 4, generator=generator, dtype=F64)
    b = torch.randn(10, generator=generator, dtype=F64)
    x0 = torch.randn(4, generator=generator, dtype=F64)
    for kw in (dict(), dict(x0=x0), dict(damp=0.5), dict(x0=x0, damp=0.5)):
        res = SOLVERS[name][0](A, b, maxiter=0, **kw)
        ref = scipy_numbers(name, A, b, maxiter=0, **kw)
        assert (int(res.istop), res.itn) == (ref[1], ref[2]) == (0, 0)
        assert torch.equal(res.x, kw.get("x0", torch.zeros(4, dtype=F64)))
        got = (res.normr, res.normar, res.norma, res.conda, res.normx)
        assert got == pytest.approx(tuple(float(v) for v in ref[3:]), rel=1e-12, abs=1e-300)
        assert res.history["normr"].shape == (0,) and res.num_matvecs == ("x0" in kw)
        assert not res.converged and "maxiter=0" in res.message
    # With a preconditioner (scipy has none): x = x0, istop 0, no iteration.
    M = DiagonalOperator(2 * torch.ones(4, dtype=F64))
    res = SOLVERS[name][0](A, b, maxiter=0, x0=x0, M=M, damp=0.5)
    assert res.istop == 0 and res.itn == 0 and torch.equal(res.x, x0)
    # An exact x0 is still istop 0 and counts as converged.
    res = SOLVERS[name][0](A, A @ x0, maxiter=0, x0=x0)
    assert res.istop == 0 and res.converged and "maxiter" not in res.message


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_b_column_matches_scipy(name, generator):
    # scipy squeezes b of shape (m, 1); so do we (the one shape that is converted).
    A, b, kw, _ = problem("x0", generator)
    res = SOLVERS[name][0](A, b[:, None], **kw)
    flat = SOLVERS[name][0](A, b, **kw)
    ref = scipy_numbers(name, A, b[:, None], **{"maxiter": None, **kw})
    assert res.x.shape == flat.x.shape == (30,) and ref[0].shape == (30,)
    assert torch.equal(res.x, flat.x) and (res.istop, res.itn) == (flat.istop, flat.itn)
    assert int(res.istop) == ref[1] and rel(res.x.numpy(), ref[0]) < 1e-8
    with pytest.raises(ValueError, match=r"b: expected shape \(200,\) \(A.shape\[0\]; \(m, 1\)"):
        SOLVERS[name][0](A, b[None, :], **kw)
    with pytest.raises(ValueError, match=r"b: expected shape \(200,\)"):
        SOLVERS[name][0](A, torch.stack([b, b], dim=1), **kw)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_default_maxiter_is_scipys(name, generator):
    A = with_singular_values(40, 12, torch.logspace(0, -6, 12), generator)
    b = torch.randn(40, generator=generator, dtype=F64)
    res = SOLVERS[name][0](A, b, atol=0.0, btol=0.0, conlim=math.inf)
    assert res.istop == 7
    assert res.itn == (12 if name == "lsmr" else 24)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_warm_start_saves_iterations(name, generator):
    A = with_singular_values(80, 40, torch.logspace(0, -3, 40), generator)
    b = torch.randn(80, generator=generator, dtype=F64)
    kw = dict(atol=1e-8, btol=1e-8, maxiter=500)
    cold = SOLVERS[name][0](A, b, **kw)
    x0 = cold.x + 1e-6 * torch.randn(40, generator=generator, dtype=F64)
    warm = SOLVERS[name][0](A, b, x0=x0, **kw)
    assert warm.itn < cold.itn
    assert rel(warm.x, cold.x) < 1e-5


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
@pytest.mark.parametrize("damp", [0.05, 1.0])
def test_damped_matches_dense_lstsq(name, damp, generator):
    A = with_singular_values(50, 20, torch.logspace(0, -5, 20), generator)
    b = torch.randn(50, generator=generator, dtype=F64)
    stacked = torch.cat([A, damp * torch.eye(20, dtype=F64)])
    rhs = torch.cat([b, torch.zeros(20, dtype=F64)])
    x_ref = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    res = SOLVERS[name][0](A, b, damp=damp, atol=1e-12, btol=1e-12, maxiter=200)
    assert res.converged
    assert rel(res.x, x_ref) < 1e-8
    assert res.normr == pytest.approx(float(torch.linalg.norm(stacked @ res.x - rhs)), rel=1e-8)


class _CountingInverse(LinearOperator):
    """R^{-1} applied by triangular solves (a preconditioner that is not a dense matrix)."""

    def __init__(self, R):
        super().__init__(R.shape, R.dtype, R.device)
        self.R = R

    def _matvec(self, x):
        return torch.linalg.solve_triangular(self.R, x[:, None], upper=True)[:, 0]

    def _rmatvec(self, y):
        return torch.linalg.solve_triangular(self.R.T, y[:, None], upper=False)[:, 0]


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
@pytest.mark.parametrize("damp", [0.0, 1e-3])
def test_qr_preconditioner(name, damp, generator):
    # cond 1e6; with M = R^{-1} from the QR of [A; damp I] the preconditioned operator is
    # orthonormal and the solve takes a couple of iterations.
    A = with_singular_values(120, 30, torch.logspace(0, -6, 30), generator)
    b = torch.randn(120, generator=generator, dtype=F64)
    stacked = torch.cat([A, damp * torch.eye(30, dtype=F64)])
    rhs = torch.cat([b, torch.zeros(30, dtype=F64)])
    x_ref = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    R = torch.linalg.qr(stacked).R
    M = _CountingInverse(R)
    opA = MatrixOperator(A)
    res = SOLVERS[name][0](opA, b, damp=damp, M=M, atol=1e-10, btol=1e-10, conlim=1e12)
    assert res.converged and res.itn <= 3
    assert rel(res.x, x_ref) < 1e-6
    # Products counted are those with A, not with M.
    assert res.num_matvecs == opA.num_matvecs == res.itn
    assert res.num_rmatvecs == opA.num_rmatvecs == res.itn + 1
    # normr is the true (damped) residual of x.
    assert res.normr == pytest.approx(float(torch.linalg.norm(stacked @ res.x - rhs)), rel=1e-6)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_diagonal_preconditioner_with_damp_and_x0(name, generator):
    # Badly scaled columns; M = diag(1 / column norms). damp must regularize x - x0.
    A = with_singular_values(60, 20, torch.logspace(0, -1, 20), generator)
    A = A * torch.logspace(-3, 3, 20, dtype=F64)
    b = torch.randn(60, generator=generator, dtype=F64)
    x0 = torch.randn(20, generator=generator, dtype=F64)
    damp = 0.1
    M = DiagonalOperator(1.0 / torch.linalg.norm(A, dim=0))
    stacked = torch.cat([A, damp * torch.eye(20, dtype=F64)])
    rhs = torch.cat([b - A @ x0, torch.zeros(20, dtype=F64)])
    x_ref = x0 + torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    kw = dict(damp=damp, x0=x0, atol=1e-12, btol=1e-12, maxiter=500)
    res = SOLVERS[name][0](A, b, M=M, **kw)
    assert res.converged
    assert rel(res.x, x_ref) < 1e-8
    plain = SOLVERS[name][0](A, b, **kw)
    assert rel(plain.x, x_ref) < 1e-6
    assert res.itn < plain.itn


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_rectangular_preconditioner(name, generator):
    # M of shape (n, k): solve min ||A M y - b|| and return x = M y.
    A = torch.randn(40, 15, generator=generator, dtype=F64)
    P = torch.randn(15, 6, generator=generator, dtype=F64)
    b = torch.randn(40, generator=generator, dtype=F64)
    y_ref = torch.linalg.lstsq(A @ P, b[:, None]).solution[:, 0]
    res = SOLVERS[name][0](A, b, M=P, atol=1e-12, btol=1e-12)
    assert res.converged and res.itn <= 8
    assert rel(res.x, P @ y_ref) < 1e-8


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_float32(name, generator):
    A = gaussian(200, 30, generator)
    b = torch.randn(200, generator=generator, dtype=F64)
    x_ref = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    res = SOLVERS[name][0](A.float(), b.float(), atol=1e-6, btol=1e-6)
    assert res.x.dtype == torch.float32 and res.converged
    assert rel(res.x.double(), x_ref) < 1e-4
    assert isinstance(res.normr, float)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
@pytest.mark.parametrize("case", ["well", "damped", "maxiter", "under"])
def test_check_every_same_result(name, case, generator):
    A, b, kw, _ = problem(case, generator)
    ref = SOLVERS[name][0](A, b, check_every=1, **kw)
    for k in (3, 7, 1000):
        opA = MatrixOperator(A)
        res = SOLVERS[name][0](opA, b, check_every=k, **kw)
        assert res.itn == ref.itn and res.istop == ref.istop
        assert torch.equal(res.x, ref.x)
        for f in ("normr", "normar", "norma", "conda", "normx"):
            assert getattr(res, f) == getattr(ref, f)
        assert torch.equal(res.history["normr"], ref.history["normr"])
        # at most k - 1 wasted iterations
        assert ref.num_matvecs <= res.num_matvecs <= ref.num_matvecs + k - 1


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_callback(name, generator):
    A, b, kw, _ = problem("well", generator)
    seen = []
    res = SOLVERS[name][0](A, b, callback=lambda x: seen.append(x.clone()), **kw)
    assert len(seen) == res.itn
    assert torch.equal(seen[-1], res.x)
    M = DiagonalOperator(torch.full((30,), 2.0, dtype=F64))
    seen.clear()
    res = SOLVERS[name][0](A, b, M=M, callback=lambda x: seen.append(x.clone()), **kw)
    assert len(seen) == res.itn and torch.allclose(seen[-1], res.x)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_accepts_other_operators(name, generator):
    import scipy.sparse as sp

    S = sp.random(40, 15, density=0.3, random_state=0, format="csr") + sp.eye(40, 15)
    b = torch.randn(40, generator=generator, dtype=F64)
    res = SOLVERS[name][0](S, b, atol=1e-10, btol=1e-10)
    xs, istop, _ = scipy_solve(name, torch.from_numpy(S.toarray()), b, atol=1e-10, btol=1e-10)
    assert rel(res.x, xs) < 1e-8 and int(res.istop) == istop


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_bad_inputs(name, generator):
    solve = SOLVERS[name][0]
    A = torch.randn(6, 4, generator=generator, dtype=F64)
    b = torch.randn(6, generator=generator, dtype=F64)
    with pytest.raises(TypeError, match=r"b: expected dtype torch.float64, got torch.float32"):
        solve(A, b.float())
    with pytest.raises(TypeError, match=r"convert with b.to\(A.dtype\)"):
        solve(A, b.float())
    with pytest.raises(ValueError, match=r"b: expected shape \(6,\)"):
        solve(A, b[:5])
    with pytest.raises(ValueError, match=r"b: expected shape \(6,\)"):
        solve(A, b[:, None].expand(6, 2))
    with pytest.raises(TypeError, match="b: expected a torch.Tensor"):
        solve(A, b.numpy())
    with pytest.raises(ValueError, match=r"b: expected device cpu, got meta — move with b.to"):
        solve(A, torch.empty(6, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match=r"x0: expected shape \(4,\)"):
        solve(A, b, x0=torch.zeros(6, dtype=F64))
    with pytest.raises(TypeError, match="x0: expected dtype"):
        solve(A, b, x0=torch.zeros(4))
    for kw, exc, pat in [
        (dict(atol=-1.0), ValueError, "atol: expected a finite number >= 0"),
        (dict(btol=float("nan")), ValueError, "btol"),
        (dict(atol="1e-6"), TypeError, "atol: expected a real number"),
        (dict(damp=-0.1), ValueError, "damp"),
        (dict(damp=float("inf")), ValueError, "damp"),
        (dict(conlim=0.0), ValueError, "conlim: expected a number > 0"),
        (dict(conlim=float("nan")), ValueError, "conlim"),
        (dict(conlim=-1.0), ValueError, r"conlim: expected a number > 0 or inf, got -1.0"),
        (dict(maxiter=-1), ValueError, "maxiter: expected a non-negative integer"),
        (dict(maxiter=2.5), ValueError, "maxiter"),
        (dict(check_every=0), ValueError, "check_every: expected a positive integer"),
        (dict(callback=3), TypeError, "callback: expected a callable"),
        (dict(M=torch.eye(5, dtype=F64)), ValueError, r"M: expected shape \(4, k\)"),
        (dict(M=torch.eye(4)), TypeError, "M: expected dtype torch.float64"),
        (dict(M=torch.eye(4, dtype=F64, device="meta")), ValueError, "M: expected device cpu"),
    ]:
        with pytest.raises(exc, match=pat):
            solve(A, b, **kw)
    with pytest.raises(TypeError, match="obj: expected"):
        solve("not an operator", b)
    # conlim = inf is allowed (no condition limit).
    assert solve(A, b, conlim=math.inf).converged


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_matches_cpu(name, dtype, generator):
    A, b, kw, _ = problem("damped", generator)
    A, b = A.to(dtype), b.to(dtype)
    cpu = SOLVERS[name][0](A, b, **kw)
    A_cuda = MatrixOperator(A.cuda())
    res = SOLVERS[name][0](A_cuda, b.cuda(), **kw)
    assert res.x.device.type == "cuda"
    assert res.istop == cpu.istop and abs(res.itn - cpu.itn) <= 2
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    assert rel(res.x.cpu(), cpu.x) < tol
    every = SOLVERS[name][0](A_cuda, b.cuda(), check_every=1, **kw)
    assert every.itn == res.itn and torch.equal(every.x, res.x)
    assert res.num_matvecs < every.num_matvecs + 10


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_no_per_iteration_host_sync(name, generator, monkeypatch):
    # Count the operations that would sync a GPU (tensor -> host reads, host -> device
    # tensor creation). Their number may grow with the iterations only through the
    # convergence-flag read every check_every iterations.
    A, b, _, _ = problem("well", generator)
    counts = {}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] = counts.get(key, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    for attr in ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, counting(attr, getattr(torch.Tensor, attr)))
    monkeypatch.setattr(torch, "tensor", counting("torch.tensor", torch.tensor))

    def run(maxiter):
        counts.clear()
        kw = dict(atol=0.0, btol=0.0, conlim=math.inf, maxiter=maxiter, check_every=5)
        res = SOLVERS[name][0](A, b, damp=0.1, **kw)
        assert res.itn == maxiter and res.istop == 7
        return dict(counts)

    short, long = run(5), run(25)
    assert long.pop("__bool__") - short.pop("__bool__") == 4
    assert long == short


def test_lsmr_uses_kernel_registry(generator, monkeypatch):
    # The fused update is looked up at call time, so a CUDA path installed later is used.
    import lsr_scale.cuda as kernels

    calls = []
    ref = kernels.lsmr_update_

    def spy(*args):
        calls.append(1)
        return ref(*args)

    monkeypatch.setattr(kernels, "lsmr_update_", spy)
    A, b, kw, _ = problem("well", generator)
    res = ls.lsmr(A, b, **kw)
    assert len(calls) == res.itn > 0
