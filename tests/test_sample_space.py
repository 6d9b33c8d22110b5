"""Preconditioned CG and the sample-space (Woodbury) solver."""

import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.refine._sample_space import GramOperator, solve_sample_space
from lsr_scale.solvers._cg import cg
from lsr_scale.solvers._result import StopReason

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(n, cond, seed=0):
    Q = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q
    ev = torch.logspace(0, -math.log10(cond), n, dtype=F64)
    return (Q * ev) @ Q.T


def _wide(n, m, cond, seed=0, dtype=F64):
    g = _gen(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64)).Q
    s = torch.logspace(0, -math.log10(cond), n, dtype=F64)
    return ((U * s) @ V.T).to(dtype)


# ------------------------------------------------------------------------------------------ CG
@pytest.mark.parametrize("check_every", [1, 7])
def test_cg_matches_dense_solve(check_every):
    A = _spd(60, 1e3)
    b = torch.randn(60, generator=_gen(1), dtype=F64)
    b0 = b.clone()
    res = cg(A, b, rtol=1e-12, check_every=check_every)
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-9)
    assert res.istop == StopReason.ATOL_BTOL and res.converged
    assert torch.equal(b, b0)
    r_true = float((b - A @ res.x).norm())
    assert r_true <= 1e-11 * float(b.norm())
    assert res.normr == pytest.approx(r_true, rel=1e-2, abs=1e-12 * float(b.norm()))
    assert res.itn == res.history["normr"].numel()
    # Iterations after convergence, until the host looks, still cost their product.
    assert res.itn <= res.num_matvecs < res.itn + check_every
    # Ritz estimates of the spectrum converge to the extremes.
    assert res.norma == pytest.approx(1.0, rel=1e-6)
    assert res.conda == pytest.approx(1e3, rel=1e-3)


def test_cg_same_itn_for_any_check_every():
    A = _spd(40, 1e2)
    b = torch.randn(40, generator=_gen(2), dtype=F64)
    r1 = cg(A, b, rtol=1e-8, check_every=1)
    r5 = cg(A, b, rtol=1e-8, check_every=5)
    assert r1.itn == r5.itn
    torch.testing.assert_close(r1.x, r5.x)


def test_cg_preconditioned_and_edge_cases():
    A = _spd(50, 1e4)
    b = torch.randn(50, generator=_gen(3), dtype=F64)
    plain = cg(A, b, rtol=1e-10)
    Minv = ls.aslinearoperator(torch.linalg.inv(A))
    pre = cg(A, b, rtol=1e-10, M=Minv)
    assert pre.itn <= 2 < plain.itn
    torch.testing.assert_close(pre.x, torch.linalg.solve(A, b))
    # maxiter reached, warm start, zero right-hand side, non-SPD.
    short = cg(A, b, maxiter=3)
    assert short.istop == StopReason.MAXITER and short.itn == 3
    warm = cg(A, b, x0=short.x, rtol=1e-10)
    assert warm.converged and warm.num_matvecs == warm.itn + 1
    zero = cg(A, torch.zeros(50, dtype=F64))
    assert zero.istop == StopReason.ZERO_RHS and zero.itn == 0 and float(zero.x.norm()) == 0
    assert cg(A, b, maxiter=0).itn == 0
    neg = cg(-A, b)
    assert neg.istop == StopReason.CONLIM and not neg.converged
    with pytest.raises(ValueError, match="square"):
        cg(torch.randn(3, 4, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="b: expected dtype torch.float64, got torch.float32"):
        cg(A, b.float())
    with pytest.raises(ValueError, match="rtol"):
        cg(A, b, rtol=-1.0)
    with pytest.raises(TypeError, match=r"b: expected a torch.Tensor of shape \(50,\)"):
        cg(A, b.numpy())
    with pytest.raises(ValueError, match=r"x0: expected shape \(50,\), got \(49,\)"):
        cg(A, b, x0=b[:49])
    with pytest.raises(ValueError, match=r"M: expected shape \(50, 50\)"):
        cg(A, b, M=torch.eye(49, dtype=F64))
    with pytest.raises(TypeError, match="callback: expected a callable or None, got int"):
        cg(A, b, callback=1)


def test_cg_callback_and_float32():
    A = _spd(30, 10).float()
    b = torch.ones(30)
    seen = []
    res = cg(A, b, rtol=1e-5, callback=lambda x: seen.append(float(x.norm())))
    assert len(seen) >= res.itn and res.x.dtype == torch.float32 and res.converged


# ------------------------------------------------------------------------------ sample space
@pytest.mark.parametrize("precond_rank", [None, 10])
def test_sample_space_min_norm_and_lsmr(precond_rank):
    n, m = 30, 200
    J = _wide(n, m, 1e3)
    b = torch.randn(n, generator=_gen(4), dtype=F64)
    res = solve_sample_space(J, b, tol=1e-13, precond_rank=precond_rank, generator=_gen(5))
    x_mn = torch.linalg.lstsq(J, b[:, None], driver="gelsd").solution[:, 0]
    torch.testing.assert_close(res.x, x_mn, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.x, torch.linalg.pinv(J) @ b, rtol=1e-8, atol=1e-10)
    lsmr = ls.lsmr(J, b, atol=1e-14, btol=1e-14, conlim=1e14, maxiter=2000)
    assert float((res.x - lsmr.x).norm() / lsmr.x.norm()) <= 1e-7
    assert res.converged and res.x.shape == (m,)
    assert res.normr == pytest.approx(float((b - J @ res.x).norm()), abs=1e-10)
    # the streamed Nystrom sketch of J J^T: rank JVP+VJP pairs, no oversampling
    build = 0 if precond_rank is None else precond_rank
    # JVP+VJP per CG iteration, the build, and two VJPs at the end.
    assert res.num_matvecs == res.itn + build
    assert res.num_rmatvecs == res.itn + build + 2
    if precond_rank is not None:
        assert res.history["precond"]["rank"] == precond_rank


@pytest.mark.parametrize("damp", [1e-3, 0.1])
def test_sample_space_damped_matches_stacked_lstsq(damp):
    n, m = 40, 120
    J = _wide(n, m, 1e6, seed=1)
    b = torch.randn(n, generator=_gen(6), dtype=F64)
    stacked = torch.cat([J, damp * torch.eye(m, dtype=F64)])
    rhs = torch.cat([b, torch.zeros(m, dtype=F64)])
    x_ref = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    res = solve_sample_space(J, b, damp=damp, tol=1e-13, precond_rank=15, generator=_gen(0))
    torch.testing.assert_close(res.x, x_ref, rtol=1e-8, atol=1e-10)
    r = b - J @ res.x
    assert res.normr == pytest.approx(
        math.sqrt(float(r.norm()) ** 2 + damp**2 * float(res.x.norm()) ** 2), rel=1e-6
    )
    assert res.normar == pytest.approx(0.0, abs=1e-8)
    lsmr = ls.lsmr(J, b, damp=damp, atol=1e-14, btol=1e-14, maxiter=3000)
    assert float((res.x - lsmr.x).norm() / lsmr.x.norm()) <= 1e-7


def test_sample_space_preconditioner_cuts_iterations():
    # Decaying spectrum: J J^T has cond 1e8, the top 20 directions span most of it.
    n, m = 80, 400
    s = torch.cat([torch.logspace(0, -4, 20, dtype=F64), torch.linspace(1e-4, 5e-5, 60)])
    g = _gen(7)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64)).Q
    J = (U * s.to(F64)) @ V.T
    b = torch.randn(n, generator=_gen(8), dtype=F64)
    plain = solve_sample_space(J, b, tol=1e-10, maxiter=300)
    # the Nystrom sketch keeps all its columns: rank 30 costs what the SVD's 20 + 10 do
    for rank, how in [(30, "nystrom"), (20, "svd")]:
        pre = solve_sample_space(
            J, b, tol=1e-10, precond_rank=rank, precond_method=how, generator=_gen(9)
        )
        assert pre.converged and pre.itn * 5 < 300 and not plain.converged, (pre.itn, plain.itn)
        torch.testing.assert_close(pre.x, torch.linalg.pinv(J) @ b, rtol=1e-6, atol=1e-8)
        assert pre.conda < 10


def test_sample_space_on_jacobian_operator_and_gram():
    from lsr_scale.operators import JacobianOperator

    g = _gen(0)
    X = torch.randn(12, 3, generator=g, dtype=F64)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def residual(p):
        return torch.func.functional_call(model, p, (X,)).reshape(-1) - 1.0

    J = JacobianOperator(residual, params)
    Jd = J.to_dense()
    K = GramOperator(J, 0.5)
    torch.testing.assert_close(K.to_dense(), Jd @ Jd.T + 0.25 * torch.eye(12, dtype=F64))
    b = -J.residual
    res = solve_sample_space(J, b, tol=1e-12, precond_rank=4, generator=_gen(1))
    torch.testing.assert_close(res.x, torch.linalg.pinv(Jd) @ b, rtol=1e-7, atol=1e-9)


def test_sample_space_build_streams_and_stores_n_by_l_only():
    # Every product with J^T during the build has at most block_size columns, and the stored
    # basis is n x l; the svd route stores m x (l + 10) and agrees in the solution.
    n, m = 30, 500
    J = _wide(n, m, 1e3, seed=2)
    b = torch.randn(n, generator=_gen(3), dtype=F64)
    widths = []

    class Spy(ls.LinearOperator):
        def __init__(self):
            super().__init__(J.shape, J.dtype, J.device)

        def _matvec(self, x):
            return J @ x

        def _rmatvec(self, y):
            return J.T @ y

        def _matmat(self, X):
            return J @ X

        def _rmatmat(self, Y):
            widths.append(Y.shape[1])
            return J.T @ Y

    res = solve_sample_space(Spy(), b, tol=1e-12, precond_rank=12, block_size=4, generator=_gen(1))
    assert max(widths) <= 4
    pinfo = res.history["precond"]
    assert pinfo["basis_nbytes"] == n * 12 * 8
    svd = solve_sample_space(
        J, b, tol=1e-12, precond_rank=12, precond_method="svd", generator=_gen(1)
    )
    torch.testing.assert_close(res.x, svd.x, rtol=1e-8, atol=1e-10)


def test_sample_space_adaptive_rank_and_refusals():
    n, m = 40, 300
    J = _wide(n, m, 1e4, seed=3)
    b = torch.randn(n, generator=_gen(3), dtype=F64)
    res = solve_sample_space(J, b, tol=1e-12, precond_rank="auto", max_rank=20, generator=_gen(2))
    assert res.converged and res.history["precond"]["rank"] <= 20
    torch.testing.assert_close(res.x, torch.linalg.pinv(J) @ b, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="precond_method"):
        solve_sample_space(J, b, precond_rank=5, precond_method="qr")
    with pytest.raises(ValueError, match="precond_rank"):
        solve_sample_space(J, b, precond_rank=0)
