"""Preconditioned conjugate gradients on a symmetric positive definite LinearOperator.

The iteration keeps every scalar (``alpha``, ``beta``, ``r^T z``, the residual norm and the
convergence flag) as a 0-d tensor on the operator's device; the host reads the flag only
every ``check_every`` iterations.
"""

from __future__ import annotations

import math

import torch

from .._checks import (
    check_callable,
    check_nonnegative_int,
    check_operator,
    check_positive_int,
    check_tolerance,
    check_vector,
)
from ..operators import aslinearoperator
from ._result import SolverResult, StopReason

__all__ = ["cg"]


def _lanczos_extremes(alphas: torch.Tensor, betas: torch.Tensor):
    """Extreme Ritz values of the (preconditioned) operator from the CG coefficients.

    CG's ``alpha_j``, ``beta_j`` give the Lanczos tridiagonal ``T`` with
    ``T_jj = 1/alpha_j + beta_{j-1}/alpha_{j-1}`` and ``T_{j,j+1} = sqrt(beta_j)/alpha_j``.
    """
    k = alphas.numel()
    if k == 0:
        return math.nan, math.nan
    a = alphas.double()
    b = betas.double()
    diag = 1.0 / a
    diag[1:] += b[: k - 1] / a[: k - 1]
    off = b[: k - 1].clamp_min(0).sqrt() / a[: k - 1]
    T = torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[0]), float(ev[-1])


def cg(
    A,
    b,
    *,
    x0=None,
    rtol=1e-6,
    atol=0.0,
    maxiter=None,
    M=None,
    callback=None,
    check_every=None,
) -> SolverResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` by preconditioned CG.

    Parameters
    ----------
    A : LinearOperator
        ``(n, n)`` symmetric positive definite (only ``matvec`` is used).
    b : torch.Tensor
        ``(n,)`` right-hand side with ``A``'s dtype and device. Not modified.
    x0 : torch.Tensor, optional
        Initial guess (one extra product). Not modified.
    rtol, atol : float
        Stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (scipy's rule).
    maxiter : int, optional
        Iteration limit; default ``10 n`` (scipy's).
    M : LinearOperator, optional
        Symmetric positive definite preconditioner approximating ``A^{-1}`` (e.g.
        ``NystromPreconditioner.inverse_operator()``).
    callback : callable, optional
        ``callback(x)`` after every iteration (do not modify ``x``).
    check_every : int, optional
        How often the host reads the on-device stopping flag: default 1 on the CPU, 10 on
        CUDA. Iterations after the flag fires leave ``x`` unchanged.

    Returns
    -------
    SolverResult
        ``x``; ``istop`` 1 (converged), 7 (``maxiter``), 0 (``b - A x0 = 0``) or 3 (``p^T A
        p <= 0``: ``A`` is not positive definite to working precision); ``itn``; ``normr``
        (``||b - A x||`` from the recurrence); ``normar`` is NaN (not tracked); ``norma`` and
        ``conda``: the largest Ritz value and the Ritz condition number of the preconditioned
        operator from the Lanczos coefficients; ``normx``; the products with ``A``;
        ``history["normr"]`` per iteration.

    Notes
    -----
    Per iteration: one product with ``A``, one with ``M``, and no host-device sync except
    the stopping check. Inner products and norms go through ``A.row_dot`` and
    ``A.row_norm`` (plain ``torch.dot`` and ``vector_norm`` unless ``A``'s rows, and so its
    vectors, are sharded over processes: :mod:`lsr_scale.distributed`). The Ritz values
    behind ``conda`` underestimate the condition number early on and converge to the extreme
    eigenvalues as the iteration proceeds.

    References
    ----------
    .. [1] M. R. Hestenes, E. Stiefel, "Methods of conjugate gradients for solving linear
       systems", J. Res. Nat. Bur. Standards 49(6), 1952.
    .. [2] Y. Saad, "Iterative methods for sparse linear systems", 2nd ed., SIAM, 2003,
       sections 6.7 and 9.2.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> from lsr_scale.solvers._cg import cg
    >>> A = ls.aslinearoperator(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    >>> res = cg(A, torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-12)
    >>> res.x
    tensor([0.0909, 0.6364], dtype=torch.float64)
    >>> int(res.istop), res.itn
    (1, 2)
    """
    x, r, res = _cg(
        A,
        b,
        x0=x0,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        M=M,
        callback=callback,
        check_every=check_every,
    )
    return res


def _cg(
    A, b, *, x0=None, rtol=1e-6, atol=0.0, maxiter=None, M=None, callback=None, check_every=None
):
    """CG returning ``(x, r, result)`` with ``r = b - A x`` (recurrence residual)."""
    A = aslinearoperator(A)
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError(f"A: expected a square operator, got shape {A.shape}")
    nl = A.local_shape[0]  # the entries this process holds (n unless A is row-sharded)
    check_vector(b, nl, A.dtype, A.device, "b", like="A")
    rtol = check_tolerance(rtol, "rtol")
    atol = check_tolerance(atol, "atol")
    maxiter = 10 * n if maxiter is None else check_nonnegative_int(maxiter, "maxiter")
    if check_every is None:
        check_every = 10 if A.device.type == "cuda" else 1
    check_every = check_positive_int(check_every, "check_every")
    check_callable(callback, "callback")
    if M is not None:
        M = aslinearoperator(M)
        check_operator(M, (n, n), A.dtype, A.device, "M")
    if x0 is not None:
        check_vector(x0, nl, A.dtype, A.device, "x0", like="A")
    mv0 = A.num_matvecs
    norm, dot = A.row_norm, A.row_dot
    with torch.no_grad():
        if x0 is None:
            x = torch.zeros_like(b)
            r = b.clone()
        else:
            x = x0.clone()
            r = b - A.matvec(x)
        normb = norm(b)
        thresh = torch.clamp_min(rtol * normb, atol)
        rnorm = norm(r)
        hist = torch.zeros(maxiter, dtype=b.dtype, device=b.device)
        alphas = torch.zeros(maxiter, dtype=b.dtype, device=b.device)
        betas = torch.zeros(maxiter, dtype=b.dtype, device=b.device)
        itn = 0
        istop = StopReason.MAXITER
        if float(rnorm) <= float(thresh) or float(rnorm) == 0.0:
            istop = StopReason.ZERO_RHS if float(rnorm) == 0.0 else StopReason.ATOL_BTOL
            maxiter_eff = 0
        else:
            maxiter_eff = maxiter
        z = M.matvec(r) if M is not None else r
        p = z.clone()
        rz = dot(r, z)
        done = torch.zeros((), dtype=torch.bool, device=b.device)
        bad = torch.zeros((), dtype=torch.bool, device=b.device)
        zero = torch.zeros((), dtype=b.dtype, device=b.device)
        n_active = torch.zeros((), dtype=torch.int64, device=b.device)
        for it in range(maxiter_eff):
            q = A.matvec(p)
            pq = dot(p, q)
            neg = pq <= 0
            bad = bad | (neg & ~done)
            stop_now = done | neg
            alpha = torch.where(stop_now, zero, rz / torch.where(neg, rz.new_ones(()), pq))
            x.add_(alpha * p)
            r.sub_(alpha * q)
            z = M.matvec(r) if M is not None else r
            rz_new = dot(r, z)
            beta = torch.where(stop_now, zero, rz_new / torch.where(rz == 0, rz.new_ones(()), rz))
            p.mul_(beta).add_(z)
            rz = torch.where(stop_now, rz, rz_new)
            rnorm = torch.where(stop_now, rnorm, norm(r))
            n_active = n_active + (~stop_now).long()
            hist[it] = rnorm
            alphas[it] = alpha
            betas[it] = beta
            done = stop_now | (rnorm <= thresh)
            if callback is not None:
                callback(x)
            itn = it + 1
            if itn % check_every == 0 or itn == maxiter_eff:
                if bool(done):
                    break
        if maxiter_eff:
            k = int(n_active)
            itn = k
            if bool(bad):
                istop = StopReason.CONLIM
            elif bool(done):
                istop = StopReason.ATOL_BTOL
        lmin, lmax = _lanczos_extremes(alphas[:itn], betas[:itn])
        conda = lmax / lmin if lmin > 0 else math.inf
        result = SolverResult(
            x=x,
            istop=istop,
            itn=itn,
            normr=float(rnorm),
            normar=math.nan,
            norma=lmax,
            conda=conda if itn else math.nan,
            normx=float(norm(x)),
            num_matvecs=A.num_matvecs - mv0,
            num_rmatvecs=0,
            history={"normr": hist[:itn].cpu()},
        )
    return x, r, result
