"""Sample-space (Woodbury) Krylov solve for wide problems (n << m)."""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_positive_int, check_tolerance
from ..operators import LinearOperator, aslinearoperator
from ..solvers._cg import _cg
from ..solvers._result import SolverResult
from ._memory import choose_block

__all__ = ["solve_sample_space", "GramOperator"]


class GramOperator(LinearOperator):
    """``J J^T + damp^2 I`` (``n x n``) for ``J`` (``n x m``): a JVP and a VJP per column."""

    def __init__(self, J: LinearOperator, damp: float = 0.0) -> None:
        n = J.shape[0]
        super().__init__((n, n), J.dtype, J.device)
        self.J, self.mu = J, float(damp) ** 2

    def _matvec(self, z):
        out = self.J.matvec(self.J.rmatvec(z))
        return out + self.mu * z if self.mu else out

    _rmatvec = _matvec

    def _matmat(self, Z):
        out = self.J.matmat(self.J.rmatmat(Z))
        return out + self.mu * Z if self.mu else out

    _rmatmat = _matmat


def solve_sample_space(
    J,
    b,
    *,
    damp=0.0,
    maxiter=None,
    tol=1e-6,
    precond_rank=None,
    generator=None,
    precond_method="nystrom",
    block_size=None,
    max_rank=None,
    check_every=None,
    callback=None,
) -> SolverResult:
    """Solve ``min ||J delta - b||^2 + damp^2 ||delta||^2`` in sample space: ``delta = J^T z``.

    For ``n << m`` (fewer residual rows than parameters) the normal equations in sample
    space, ``(J J^T + damp^2 I) z = b``, are ``n x n``. They are solved by preconditioned
    CG, and ``delta = J^T z``. With ``damp = 0`` and ``J`` of full row rank, ``delta`` is the
    minimum-norm solution of ``J delta = b``. Called from :func:`lsr_scale.refine` with
    ``b = -f0``.

    Parameters
    ----------
    J : LinearOperator
        ``(n, m)`` operator (e.g. a :class:`~lsr_scale.JacobianOperator`).
    b : torch.Tensor
        ``(n,)`` right-hand side (J's dtype and device).
    damp : float
        Tikhonov damping.
    maxiter : int, optional
        CG iteration limit (default ``10 n``).
    tol : float
        Relative residual tolerance of the sample-space system:
        ``||b - (J J^T + damp^2) z|| <= tol ||b||``.
    precond_rank : int or "auto", optional
        Rank of a Nystrom preconditioner of ``J J^T + damp^2 I``
        (:class:`~lsr_scale.precond.NystromPreconditioner` of ``J^T``); ``None``: none.
        ``"auto"``: adaptive, doubling from 16 while the a-posteriori error estimate of
        ``J J^T`` is above ``1e-10`` (relative), up to ``max_rank``.
    generator : torch.Generator, optional
        Randomness of the preconditioner.
    precond_method : {"nystrom", "svd"}
        How the preconditioner approximates ``J J^T``. ``"nystrom"`` (default): the shifted
        Nystrom sketch of ``J J^T`` itself from ``n``-dimensional test vectors, streamed:
        only ``n x l`` numbers are stored, and the ``m``-sized transients ``J^T X`` are taken
        ``block_size`` columns at a time. It resolves ``J J^T`` to its rounding level, which
        is all CG on ``J J^T`` can use. ``"svd"``: a randomized SVD of ``J^T``, which stores
        the ``m x (l + 10)`` sample ``J^T Omega`` and its orthonormal basis (the memory this
        route exists to avoid; kept for comparison).
    block_size : int, optional
        Columns per product with ``J^T`` during the build: the build's transient memory is
        about ``2 m block_size`` numbers. Default: ``J.batch_size`` (or 64), at most what
        :func:`lsr_scale.refine._memory.choose_block` allows in the free memory.
    max_rank : int, optional
        Cap of ``precond_rank="auto"`` (default ``min(300, n // 2)``).
    check_every : int, optional
        Host checks of the CG stopping flag (see :func:`lsr_scale.solvers._cg.cg`).
    callback : callable, optional
        ``callback(z)`` after every CG iteration (sample-space iterate).

    Returns
    -------
    SolverResult
        ``x = delta`` (parameter space); ``itn`` CG iterations; ``istop`` as CG's;
        ``normr = sqrt(||b - J delta||^2 + damp^2 ||delta||^2)``; ``normar = ||J^T r -
        damp^2 delta||``; ``norma`` and ``conda``: Ritz estimates of the largest eigenvalue
        and the condition number of the preconditioned ``J J^T + damp^2 I``; ``normx``;
        ``num_matvecs`` / ``num_rmatvecs``: every product with ``J``, preconditioner build
        included; ``history`` with the CG residual norms ``"normr"`` and the preconditioner's
        ``"precond"`` info (or None).

    Notes
    -----
    Cost: the build (``rank`` JVPs and VJPs; ``rank + 10`` with ``"svd"``), one JVP + one
    VJP per CG iteration, and two VJPs at the end (``delta = J^T z`` and ``J^T rho`` for
    ``normar``, batched). The parameter-space residual needs no extra product: with the CG
    residual
    ``rho = b - (J J^T + damp^2) z``, ``b - J delta = rho + damp^2 z``. CG works on
    ``J J^T``, whose condition number is ``cond(J)^2``: prefer parameter-space LSMR when
    ``n`` is not much smaller than ``m``, or use ``damp > 0`` and the preconditioner.

    References
    ----------
    .. [1] Z. Frangella, J. A. Tropp, M. Udell, "Randomized Nystrom preconditioning",
       SIAM J. Matrix Anal. Appl. 44(2), 2023.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.refine import solve_sample_space
    >>> J = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    >>> res = solve_sample_space(J, torch.tensor([1.0, 2.0], dtype=torch.float64), tol=1e-12)
    >>> torch.allclose(res.x, torch.linalg.pinv(J) @ torch.tensor([1.0, 2.0],
    ...                dtype=torch.float64))
    True
    """
    J = aslinearoperator(J)
    damp = check_tolerance(damp, "damp")
    tol = check_tolerance(tol, "tol")
    mv0, rmv0 = J.num_matvecs, J.num_rmatvecs
    K = GramOperator(J, damp)
    Minv = None
    pinfo = None
    if precond_rank is not None:
        P = _build_preconditioner(
            J, precond_rank, damp, generator, precond_method, block_size, max_rank
        )
        Minv = P.inverse_operator()
        pinfo = P.info()
    with torch.no_grad():
        z, rho, res = _cg(
            K,
            b,
            rtol=tol,
            maxiter=maxiter,
            M=Minv,
            callback=callback,
            check_every=check_every,
        )
        both = J.rmatmat(torch.stack([z, rho], dim=1))
        delta, jt_rho = both[:, 0].contiguous(), both[:, 1]
        mu = damp**2
        r_param = rho + mu * z if mu else rho
        norm = torch.linalg.vector_norm
        normr = math.sqrt(float(norm(r_param)) ** 2 + mu * float(norm(delta)) ** 2)
        normar = float(norm(jt_rho))
        normx = float(norm(delta))
    history = dict(res.history)
    history["precond"] = pinfo
    return SolverResult(
        x=delta,
        istop=res.istop,
        itn=res.itn,
        normr=normr,
        normar=normar,
        norma=res.norma,
        conda=res.conda,
        normx=normx,
        num_matvecs=J.num_matvecs - mv0,
        num_rmatvecs=J.num_rmatvecs - rmv0,
        history=history,
    )


def _build_preconditioner(J, rank, damp, generator, method, block_size, max_rank):
    """The Nystrom preconditioner of ``J J^T + damp^2 I`` (``n x l`` stored, see above)."""
    from ..precond import NystromPreconditioner

    check_choice(method, ("nystrom", "svd"), "precond_method")
    n, m = J.shape
    cap = n if method == "nystrom" else min(n, m)
    if max_rank is None:
        max_rank = min(300, max(1, n // 2))
    max_rank = min(check_positive_int(max_rank, "max_rank"), cap)
    adaptive = rank == "auto"
    if adaptive:
        rank = min(16, max_rank)
    else:
        rank = min(check_positive_int(rank, "precond_rank"), cap)
    if block_size is None:
        limit = getattr(J, "batch_size", None) or 64
        block_size = choose_block(m, J.dtype, J.device, limit=limit)
    else:
        block_size = check_positive_int(block_size, "block_size")
    return NystromPreconditioner(
        J.T,
        rank,
        damp,
        generator=generator,
        method=method,
        oversample=10 if method == "svd" else 0,
        adaptive=adaptive,
        tol=1e-10,
        max_rank=max_rank,
        block_size=block_size,
    )
