"""Preconditioners: same solutions as unpreconditioned LSMR and lstsq, fast convergence, costs."""

import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.precond import (
    JacobiPreconditioner,
    NystromPreconditioner,
    Preconditioner,
    SketchPreconditioner,
)
from lsr_scale.testing import dottest

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _matrix(n, m, svals, seed=0, dtype=F64):
    g = _gen(seed)
    U = torch.linalg.qr(torch.randn(n, len(svals), generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(m, len(svals), generator=g, dtype=F64)).Q
    return ((U * svals) @ V.T).to(dtype)


def _logspace(m, cond):
    return torch.logspace(0, -math.log10(cond), m, dtype=F64)


def _cond(A):
    s = torch.linalg.svdvals(A)
    return float(s[0] / s[-1])


def _builders(damp=0.0):
    return {
        "nystrom-svd": lambda A: NystromPreconditioner(A, 15, damp, generator=_gen(1)),
        "nystrom-nystrom": lambda A: NystromPreconditioner(
            A, 15, damp, generator=_gen(1), method="nystrom"
        ),
        "nystrom-bf16": lambda A: NystromPreconditioner(
            A, 15, damp, generator=_gen(1), basis_dtype=torch.bfloat16
        ),
        "nystrom-adaptive": lambda A: NystromPreconditioner(
            A, 4, damp, generator=_gen(1), adaptive=True, tol=1e-6
        ),
        "sketch-sparse": lambda A: SketchPreconditioner(A, generator=_gen(1)),
        "sketch-gaussian": lambda A: SketchPreconditioner(A, sketch="gaussian", generator=_gen(1)),
        "sketch-srht": lambda A: SketchPreconditioner(A, sketch="srht", generator=_gen(1)),
        "jacobi": lambda A: JacobiPreconditioner(A, damp),
    }


@pytest.fixture(scope="module")
def moderate():
    """cond 1e5, float64, with columns of very different scales (so Jacobi matters)."""
    n, m = 400, 40
    A = _matrix(n, m, _logspace(m, 1e4)) * torch.logspace(0, 1, m, dtype=F64)
    b = torch.randn(n, generator=_gen(9), dtype=F64)
    return A, b


_PLAIN = {}


@pytest.mark.parametrize("name", list(_builders()))
@pytest.mark.parametrize("damp", [0.0, 1e-3])
def test_same_solution_as_lsmr_and_lstsq(moderate, name, damp):
    A, b = moderate
    assert _cond(A) <= 1e6
    m = A.shape[1]
    stacked = torch.cat([A, damp * torch.eye(m, dtype=F64)])
    rhs = torch.cat([b, torch.zeros(m, dtype=F64)])
    x_ref = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    kw = dict(damp=damp, atol=1e-14, btol=1e-14, conlim=1e14, maxiter=5000)
    if damp not in _PLAIN:
        _PLAIN[damp] = ls.lsmr(A, b, **kw)
    plain = _PLAIN[damp]
    M = _builders(damp)[name](A)
    assert isinstance(M, Preconditioner) and M.shape == (m, m)
    res = ls.lsmr(A, b, M=M, **kw)
    assert res.converged
    rel = float((res.x - x_ref).norm() / x_ref.norm())
    assert rel <= 1e-7, rel
    assert float((res.x - plain.x).norm() / plain.x.norm()) <= 1e-7
    assert res.itn <= plain.itn


@pytest.mark.parametrize("name", list(_builders()))
def test_preconditioner_is_consistent_operator(moderate, name):
    A, _ = moderate
    M = _builders()[name](A)
    assert dottest(M, generator=_gen(2))
    assert M.build_time > 0
    assert M.build_matvecs + M.build_rmatvecs > 0
    assert isinstance(M.info(), dict) and M.info()["name"] == M.name


@pytest.mark.parametrize("sketch", ["sparse_sign", "gaussian", "srht"])
def test_sketch_preconditioner_ill_conditioned_tall(sketch):
    n, m = 4000, 50
    A = _matrix(n, m, _logspace(m, 1e9), seed=3)
    assert _cond(A) >= 1e8
    b = torch.randn(n, generator=_gen(4), dtype=F64)
    M = SketchPreconditioner(A, sketch=sketch, generator=_gen(5))
    assert M.build_matvecs == m and M.build_rmatvecs == 0
    assert M.sketch_size == 4 * m
    assert _cond(A @ M.to_dense()) < 10
    res = ls.lsmr(A, b, M=M, atol=1e-10, btol=1e-10, conlim=1e12, maxiter=200)
    assert res.converged and res.itn <= 30, res.itn
    x_ref = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    r = b - A @ res.x
    r_ref = b - A @ x_ref
    assert float(r.norm()) <= float(r_ref.norm()) * (1 + 1e-10)
    # Without the preconditioner LSMR is nowhere near converged after 30 iterations.
    assert not ls.lsmr(A, b, atol=1e-10, btol=1e-10, conlim=1e12, maxiter=30).converged


def test_sketch_preconditioner_streams_jacobian_blocks():
    from lsr_scale.operators import JacobianOperator

    g = _gen(0)
    W = torch.randn(600, 12, generator=g, dtype=F64) * torch.logspace(0, -4, 12, dtype=F64)
    fns = [lambda p, W=W[i : i + 150]: torch.tanh(W @ p["x"]) for i in range(0, 600, 150)]
    J = JacobianOperator(fns, {"x": torch.randn(12, generator=g, dtype=F64)})
    M = SketchPreconditioner(J, sketch_size=48, generator=_gen(1))
    Mref = SketchPreconditioner(J.to_dense(), sketch_size=48, generator=_gen(1))
    torch.testing.assert_close(M.to_dense(), Mref.to_dense())
    assert M.build_matvecs == 12
    assert _cond(J.to_dense() @ M.to_dense()) < 10


def test_sketch_preconditioner_errors_and_truncation():
    A = torch.randn(30, 40, dtype=F64, generator=_gen(0))
    with pytest.raises(ValueError, match="tall"):
        SketchPreconditioner(A)
    B = torch.randn(100, 10, dtype=F64, generator=_gen(0))
    with pytest.raises(ValueError, match="sketch_size: expected >= m = 10, got 5"):
        SketchPreconditioner(B, sketch_size=5)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None"):
        SketchPreconditioner(B, sketch_size=200, generator=3)
    with pytest.raises(ValueError, match="sketch"):
        SketchPreconditioner(B, sketch="count")
    # sketch_size >= n: exact QR of A itself
    M = SketchPreconditioner(B, sketch_size=200, generator=_gen(0))
    assert M.sketch_kind == "identity"
    assert _cond(B @ M.to_dense()) < 1 + 1e-10
    # Rank deficient: error by default, truncation on request (minimum-norm solution).
    C = _matrix(500, 12, torch.ones(8, dtype=F64), seed=2)
    with pytest.raises(ValueError, match="rank"):
        SketchPreconditioner(C, generator=_gen(0))
    M = SketchPreconditioner(C, generator=_gen(0), truncate=True)
    assert M.truncated and M.rank == 8
    b = torch.randn(500, dtype=F64, generator=_gen(3))
    res = ls.lsmr(C, b, M=M, atol=1e-12, btol=1e-12)
    torch.testing.assert_close(res.x, torch.linalg.pinv(C) @ b, rtol=1e-8, atol=1e-10)


def _decaying_problem():
    # Top 25 singular values decay 1 -> 1e-4, then 75 flat in [1e-4, 5e-5]: cond 2e4.
    s = torch.cat([torch.logspace(0, -4, 25, dtype=F64), torch.linspace(1e-4, 5e-5, 75)])
    return _matrix(1000, 100, s.to(F64), seed=4)


@pytest.mark.parametrize("method", ["svd", "nystrom"])
def test_nystrom_clusters_decaying_spectrum(method):
    A = _decaying_problem()
    M = NystromPreconditioner(A, 25, generator=_gen(0), method=method, oversample=10)
    kappa = _cond(A)
    kappa_pre = _cond(A @ M.to_dense())
    assert kappa > 1e4 and kappa_pre < 5 and kappa / kappa_pre > 3e3, (kappa, kappa_pre)
    assert M.rank == 25 and M.eigenvalues.shape == (25,)
    if method == "svd":
        assert (M.build_matvecs, M.build_rmatvecs) == (35, 35)
    else:
        assert (M.build_matvecs, M.build_rmatvecs) == (25, 25)
    # Damping: [A; damp I] M is clustered too, and the CG form is M^2.
    damp = 1e-3
    Md = NystromPreconditioner(A, 25, damp, generator=_gen(0), method=method)
    Dm = Md.to_dense()
    stacked = torch.cat([A, damp * torch.eye(100, dtype=F64)]) @ Dm
    assert _cond(stacked) < 2
    torch.testing.assert_close(Md.inverse_operator().to_dense(), Dm @ Dm)


def test_nystrom_float32_svd_beats_nystrom():
    """The float32 caution: a Nystrom sketch of A^T A squares the condition number."""
    s = torch.logspace(0, -6, 60, dtype=F64)
    A = _matrix(600, 60, s, seed=6, dtype=torch.float32)
    out = {}
    for method in ("svd", "nystrom"):
        M = NystromPreconditioner(A, 50, generator=_gen(0), method=method)
        out[method] = _cond(A.double() @ M.to_dense().double())
    assert out["svd"] < 20 < out["nystrom"], out


def test_nystrom_bf16_basis():
    A = _decaying_problem()
    M32 = NystromPreconditioner(A, 25, generator=_gen(0))
    Mbf = NystromPreconditioner(A, 25, generator=_gen(0), basis_dtype=torch.bfloat16)
    assert Mbf.blocks[-1].dtype == torch.bfloat16 and Mbf.gamma > 0
    assert 0 < Mbf.rank_full_precision < 25  # the steep top stays in the working dtype
    assert Mbf.basis_nbytes < M32.basis_nbytes
    assert _cond(A @ Mbf.to_dense()) < 10
    ev = torch.linalg.eigvalsh(Mbf.to_dense())
    assert float(ev.min()) > 0  # positive definite despite the rounded basis
    b = torch.randn(1000, dtype=F64, generator=_gen(1))
    r32 = ls.lsmr(A, b, M=M32, atol=1e-12, btol=1e-12, conlim=1e12)
    rbf = ls.lsmr(A, b, M=Mbf, atol=1e-12, btol=1e-12, conlim=1e12)
    assert rbf.converged and rbf.itn <= 2 * r32.itn
    torch.testing.assert_close(rbf.x, r32.x, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["svd", "nystrom"])
def test_nystrom_adaptive_rank(method):
    # Exactly rank 20 plus a 1e-7 perturbation.
    n, m = 300, 80
    L = _matrix(n, m, torch.linspace(10, 1, 20, dtype=F64), seed=7)
    A = L + 1e-7 * torch.randn(n, m, generator=_gen(8), dtype=F64)
    M = NystromPreconditioner(A, 5, generator=_gen(0), method=method, adaptive=True, tol=1e-8)
    assert [h["rank"] for h in M.rank_history] == [5, 10, 20]
    assert M.rank == 20 and M.error_estimate <= 1e-8
    assert M.rank_history[1]["error_estimate"] > 1e-3
    capped = NystromPreconditioner(
        A, 5, generator=_gen(0), method=method, adaptive=True, tol=1e-8, max_rank=12
    )
    assert capped.rank == 12 and capped.error_estimate > 1e-8


@pytest.mark.parametrize(
    ("dtype", "power_iters"), [(F64, 2), (torch.float32, 0)], ids=["f64-power2", "f32"]
)
def test_nystrom_adaptive_rank_stops_at_the_numerical_rank(dtype, power_iters):
    # Exactly rank 20 plus a 1e-7 perturbation (below float32's resolution). Power iterations
    # or float32 leave only rounding noise in a block past rank 20; that noise must not enter
    # the basis unorthogonalized (it did, and the estimate then grew to > 1 up to max_rank).
    n, m = 300, 80
    L = _matrix(n, m, torch.linspace(10, 1, 20, dtype=F64), seed=7)
    A = (L + 1e-7 * torch.randn(n, m, generator=_gen(8), dtype=F64)).to(dtype)
    M = NystromPreconditioner(
        A, 5, generator=_gen(3), power_iters=power_iters, adaptive=True, tol=1e-8
    )
    assert [h["rank"] for h in M.rank_history] == [5, 10, 20]
    assert M.rank == 20 and M.error_estimate <= 1e-8


def test_nystrom_reproducible():
    A = _decaying_problem()
    a = NystromPreconditioner(A, 10, generator=_gen(3)).to_dense()
    b = NystromPreconditioner(A, 10, generator=_gen(3)).to_dense()
    c = NystromPreconditioner(A, 10, generator=_gen(4)).to_dense()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_jacobi_column_norms():
    A = torch.randn(50, 8, dtype=F64, generator=_gen(0)) * torch.arange(8, dtype=F64)
    M = JacobiPreconditioner(A, damp=0.5)
    expected = 1 / torch.sqrt(A.square().sum(0) + 0.25)
    expected[0] = 2.0  # zero column, damped: 1/damp
    torch.testing.assert_close(M.scale, expected)
    assert M.norm_method == "exact" and M.build_matvecs == 8 and M.build_rmatvecs == 0
    M0 = JacobiPreconditioner(A)
    assert float(M0.scale[0]) == 1.0  # zero column, undamped: 1
    # Wide: exact via n rmatvecs on identity rows.
    W = torch.randn(6, 30, dtype=F64, generator=_gen(1))
    Mw = JacobiPreconditioner(W)
    torch.testing.assert_close(Mw.scale, W.square().sum(0).rsqrt())
    assert Mw.build_rmatvecs == 6 and Mw.build_matvecs == 0
    # Hutchinson: unbiased, noisy.
    Mh = JacobiPreconditioner(A[:, 1:], method="hutchinson", num_samples=4000, generator=_gen(2))
    assert Mh.norm_method == "hutchinson" and Mh.build_rmatvecs == 4000
    torch.testing.assert_close(Mh.scale, M0.scale[1:], rtol=0.05, atol=0)


def test_preconditioner_specifications_build():
    from lsr_scale.precond import Auto, Jacobi, Nystrom, Sketch, as_preconditioner

    tall = torch.randn(400, 10, dtype=F64, generator=_gen(0))
    square = torch.randn(60, 50, dtype=F64, generator=_gen(0))
    assert as_preconditioner(None) is None
    assert isinstance(Jacobi().build(tall), JacobiPreconditioner)
    assert isinstance(Sketch().build(tall, generator=_gen(1)), SketchPreconditioner)
    ny = Nystrom(rank=7).build(square, damp=0.1, generator=_gen(1))
    assert isinstance(ny, NystromPreconditioner) and ny.rank == 7 and ny.damp == 0.1
    assert Nystrom().build(square, generator=_gen(1)).rank == 25  # min(300, min(n, m) // 2)
    assert Auto().choose(tall.shape) == Sketch()
    assert Auto().choose(square.shape) == Nystrom()
    assert Auto().build(tall, generator=_gen(1)).name == "sketch"
    assert Auto(nystrom=Nystrom(rank=5)).build(square, generator=_gen(1)).rank == 5
    assert as_preconditioner("jacobi") == Jacobi()
    # the same draws as the operator class called directly
    direct = NystromPreconditioner(square, 7, 0.1, generator=_gen(1))
    torch.testing.assert_close(direct.eigenvalues, ny.eigenvalues, rtol=0, atol=0)
    with pytest.raises(ValueError, match="preconditioner"):
        as_preconditioner("ilu")
    with pytest.raises(TypeError, match="LinearOperator"):
        Jacobi().build([[1.0]])
    with pytest.raises(ValueError, match="rank"):
        NystromPreconditioner(square, 0)
    with pytest.raises(ValueError, match="method"):
        NystromPreconditioner(square, 3, method="qr")


def test_constructor_validation():
    square = torch.randn(60, 50, dtype=F64, generator=_gen(0))
    with pytest.raises(ValueError, match="rank: expected a positive integer, got 0"):
        NystromPreconditioner(square, 0)
    with pytest.raises(ValueError, match="method: expected one of 'svd', 'nystrom', got 'qr'"):
        NystromPreconditioner(square, 3, method="qr")
    with pytest.raises(TypeError, match="basis_dtype: expected a floating torch.dtype"):
        NystromPreconditioner(square, 3, basis_dtype=torch.int32)
    with pytest.raises(ValueError, match="block_size: expected a positive integer, got 0"):
        NystromPreconditioner(square, 3, block_size=0)
    with pytest.raises(ValueError, match="damp: expected a finite number >= 0"):
        JacobiPreconditioner(square, -1.0)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None"):
        JacobiPreconditioner(square, generator="seed")


def test_nystrom_block_size_and_global_rng():
    # block_size bounds the columns per product and leaves the result as it was; without a
    # generator the build draws from torch's global RNG (torch.manual_seed reproduces it).
    A = _decaying_problem()
    ref = NystromPreconditioner(A, 12, generator=_gen(3), adaptive=True, tol=1e-6)
    widest = []
    op = ls.aslinearoperator(A)
    matmat = op._matmat
    op._matmat = lambda X: widest.append(X.shape[1]) or matmat(X)
    blk = NystromPreconditioner(op, 12, generator=_gen(3), adaptive=True, tol=1e-6, block_size=7)
    assert max(widest) == 7 and blk.rank == ref.rank
    assert blk.build_matvecs == ref.build_matvecs
    torch.testing.assert_close(blk.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=0)
    torch.manual_seed(3)
    glob = NystromPreconditioner(A, 12, adaptive=True, tol=1e-6)
    assert torch.equal(glob.U, ref.U)


def test_float32_operator():
    A = _matrix(500, 30, _logspace(30, 1e3), seed=1, dtype=torch.float32)
    b = torch.randn(500, generator=_gen(0))
    for M in (
        NystromPreconditioner(A, 10, generator=_gen(0)),
        SketchPreconditioner(A, generator=_gen(0)),
        JacobiPreconditioner(A),
    ):
        assert M.dtype == torch.float32
        res = ls.lsmr(A, b, M=M, atol=1e-6, btol=1e-6, maxiter=300)
        assert res.x.dtype == torch.float32 and res.converged


class _OutOfMemoryAbove(ls.LinearOperator):
    """Dense ``A`` whose blocks of more than ``limit`` columns run out of memory (a simulated
    ``torch.OutOfMemoryError``); products go column by column, so the block size cannot
    change a bit of them."""

    def __init__(self, A, limit=math.inf):
        super().__init__(A.shape, A.dtype, A.device)
        self.A, self.limit, self.failures, self.widest = A, limit, 0, 0

    def _check(self, k):
        if k > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError(f"simulated: {k} columns")
        self.widest = max(self.widest, k)

    def _matvec(self, x):
        return self.A @ x

    def _rmatvec(self, y):
        return self.A.T @ y

    def _matmat(self, X):
        self._check(X.shape[1])
        return super()._matmat(X)

    def _rmatmat(self, Y):
        self._check(Y.shape[1])
        return super()._rmatmat(Y)


@pytest.mark.parametrize(
    "build",
    [
        lambda A, g: NystromPreconditioner(A, 12, damp=1e-3, generator=g),
        lambda A, g: NystromPreconditioner(A, 6, method="nystrom", adaptive=True, generator=g),
        lambda A, g: SketchPreconditioner(A, generator=g),
        lambda A, g: SketchPreconditioner(A, sketch="gaussian", generator=g),
        lambda A, g: SketchPreconditioner(A, sketch="srht", generator=g),
        lambda A, g: SketchPreconditioner(A, sketch_size=500, generator=g),
        lambda A, g: JacobiPreconditioner(A),
        lambda A, g: JacobiPreconditioner(A.T),
        lambda A, g: JacobiPreconditioner(A, method="hutchinson", generator=g),
    ],
    ids=[
        "nystrom-svd",
        "nystrom-adaptive",
        "sketch-sparse",
        "sketch-gaussian",
        "sketch-srht",
        "sketch-identity",
        "jacobi-exact",
        "jacobi-exact-wide",
        "jacobi-hutchinson",
    ],
)
def test_out_of_memory_during_the_build(build, generator):
    # Out of memory above 7 columns: each block is halved until it fits, with a warning, and
    # the preconditioner equals the one built without running out (same generator): bitwise
    # for Nystrom, whose test vectors are drawn before the products; to rounding for the
    # sketch, whose row chunks are summed in another order when they are narrower (bitwise on
    # some BLAS builds and thread counts, not on all).
    A = _matrix(400, 30, _logspace(30, 1e4), seed=3)
    fits, tight = _OutOfMemoryAbove(A), _OutOfMemoryAbove(A, limit=7)
    ref = build(fits, _gen(5))
    with pytest.warns(RuntimeWarning, match=r"out of memory on a block of \d+ columns; retrying"):
        got = build(tight, _gen(5))
    assert tight.failures > 0 and tight.widest <= 7 and fits.failures == 0
    kept = {NystromPreconditioner: "block_size", SketchPreconditioner: "chunk"}.get(type(got))
    if kept:  # the smaller size is kept, and shown
        before = getattr(ref, kept)
        assert getattr(got, kept) <= 7 and (before is None or before > 7)
    E = torch.eye(30, dtype=F64)
    if isinstance(got, JacobiPreconditioner):
        # Column sums of squares: the block width changes the order of the additions.
        torch.testing.assert_close(got.scale, ref.scale, rtol=1e-13, atol=0)
    elif isinstance(got, SketchPreconditioner):
        torch.testing.assert_close(got.matmat(E), ref.matmat(E), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.T.matmat(E), ref.T.matmat(E), rtol=1e-10, atol=1e-12)
    else:
        assert torch.equal(got.matmat(E), ref.matmat(E))
        assert torch.equal(got.T.matmat(E), ref.T.matmat(E))
