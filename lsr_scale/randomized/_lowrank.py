"""Randomized eigen-approximation of ``A^T A``, fixed-rank or adaptive (the Nystrom build)."""

from __future__ import annotations

import math

import torch

from .._checks import (
    check_choice,
    check_generator,
    check_nonnegative_int,
    check_positive_int,
    check_tolerance,
)
from ..operators import aslinearoperator
from ._blocks import blocked_apply
from ._range import RangeFinder
from ._rng import gaussian

__all__ = ["lowrank_gram"]


class _NystromSketch:
    """Randomized Nystrom approximation of ``H = A^T A`` with the stabilizing shift.

    ``H_nys = Y (Omega^T Y)^+ Y^T`` with ``Y = H Omega`` (Frangella-Tropp-Udell 2023, Alg. 2.1):
    ``nu = sqrt(m) eps ||Y||``, ``Y_nu = Y + nu Omega``, ``C = chol(Omega^T Y_nu)``,
    ``B = Y_nu C^-1``, ``B = U Sigma W^T``, ``Lambda = max(0, Sigma^2 - nu)``. It has the
    interface of :class:`RangeFinder` that :func:`lowrank_gram` uses (``add``, ``residual``,
    ``gram_eig``).
    """

    def __init__(self, A, block_size=None) -> None:
        self.A = A
        self.block_size = block_size
        self.Omega = None
        self.Y = None
        self._U = self._lam = None

    def _H(self, X):
        Y, self.block_size = blocked_apply(
            lambda Z: self.A.rmatmat(self.A.matmat(Z)),
            X,
            self.block_size,
            what="Nystrom sketch: A.rmatmat(A.matmat(.))",
        )
        return Y

    def residual(self, Omega, r):
        """``(H Omega, ||(H - H_r) omega_i||^2 per column)`` for the rank-``r`` truncation."""
        Y = self._H(Omega)
        U, lam = self.gram_eig()
        U, lam = U[:, :r], lam[:r]
        return Y, (Y - U @ (lam[:, None] * (U.T @ Omega))).square().sum(dim=0)

    def add(self, Omega, Y=None):
        if Y is None:
            Y = self._H(Omega)
        if self.Omega is None:
            Om, Yall = Omega, Y
        else:
            Om = torch.cat([self.Omega, Omega], dim=1)
            Yall = torch.cat([self.Y, Y], dim=1)
        # Orthonormalize the test matrix; Y follows linearly (Y = H Omega).
        Qo, R = torch.linalg.qr(Om, mode="reduced")
        self.Omega = Qo
        self.Y = torch.linalg.solve_triangular(R, Yall, upper=True, left=False)
        self._U = self._lam = None

    def gram_eig(self):
        if self._U is None:
            Om, Y = self.Omega, self.Y
            m = Om.shape[0]
            eps = torch.finfo(Y.dtype).eps
            nu = math.sqrt(m) * eps * float(torch.linalg.matrix_norm(Y, ord=2))
            Ynu = Y + nu * Om
            Cm = Om.T @ Ynu
            Cm = 0.5 * (Cm + Cm.T)
            C, info = torch.linalg.cholesky_ex(Cm)
            if int(info) != 0:  # add the shift again until it factors (rounding in Y)
                shift = nu
                while int(info) != 0:
                    shift *= 10
                    C, info = torch.linalg.cholesky_ex(
                        Cm + shift * torch.eye(Cm.shape[0], dtype=Cm.dtype, device=Cm.device)
                    )
            B = torch.linalg.solve_triangular(C.T, Ynu, upper=True, left=False)
            U, Sig, _ = torch.linalg.svd(B, full_matrices=False)
            self._U, self._lam = U, (Sig.square() - nu).clamp_min(0)
        return self._U, self._lam


def lowrank_gram(
    A,
    rank,
    *,
    method="svd",
    oversample=10,
    power_iters=0,
    generator=None,
    adaptive=False,
    tol=1e-8,
    max_rank=None,
    block_size=None,
):
    """Randomized eigen-approximation ``A^T A ~= U diag(lam) U^T`` of rank ``rank``.

    Returns ``(U, lam, info)`` with ``U`` (m x rank) orthonormal, ``lam`` descending, and
    ``info`` holding ``rank``, ``error_estimate`` (relative; None unless ``adaptive``),
    ``history`` (one entry per adaptive round) and ``block_size`` (the one in effect at the
    end: smaller than the one given after running out of memory).

    Parameters
    ----------
    A : LinearOperator (n x m) or anything :func:`lsr_scale.aslinearoperator` accepts.
    rank : int
        The rank (the starting rank when ``adaptive``).
    method : {"svd", "nystrom"}
        ``"svd"``: randomized SVD of ``A`` (:class:`RangeFinder`; ``rank + oversample``
        products each way). ``"nystrom"``: shifted Nystrom approximation of ``A^T A`` from
        ``Y = A^T A Omega`` (``rank`` JVP+VJP pairs; squares the condition number).
    oversample, power_iters
        Extra test vectors and subspace iterations of ``"svd"`` (``power_iters`` must be 0
        with ``"nystrom"``).
    generator : torch.Generator, optional
        Source of the test vectors, drawn in float64 on its device (so a float32 and a
        float64 build see the same vectors) and then converted; None: torch's global RNG.
    adaptive : bool
        Double the rank until the estimated ``||A^T A - U Lambda U^T|| / lambda_1`` is
        ``<= tol`` or the rank reaches ``max_rank`` (default ``min(n, m)``, or ``m`` with
        ``"nystrom"``). The probe vectors of each round become the next block of test
        vectors, so the estimate costs no extra products.
    block_size : int, optional
        At most this many columns per product with ``A`` / ``A^T`` (default: all at once).
        A block that runs out of memory is halved and retried, with a ``RuntimeWarning``;
        the test vectors are drawn before, so the result does not change.

    See :class:`lsr_scale.precond.NystromPreconditioner` for the estimate and references.
    """
    A = aslinearoperator(A)
    n, m = A.shape
    check_choice(method, ("svd", "nystrom"), "method")
    rank = check_positive_int(rank, "rank")
    oversample = check_nonnegative_int(oversample, "oversample")
    power_iters = check_nonnegative_int(power_iters, "power_iters")
    tol = check_tolerance(tol, "tol")
    cap = min(m, n) if method == "svd" else m
    max_rank = cap if max_rank is None else min(check_positive_int(max_rank, "max_rank"), cap)
    if method == "nystrom" and power_iters:
        raise ValueError(f"power_iters: expected 0 with method='nystrom', got {power_iters}")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    check_generator(generator)

    def gauss(k):
        return gaussian(m, k, generator, dtype=A.dtype, device=A.device, draw_dtype=torch.float64)

    if method == "svd":
        sk = RangeFinder(A, power_iters=power_iters, block_size=block_size)
    else:
        sk = _NystromSketch(A, block_size)
    # With the SVD the oversampled columns sharpen the top `rank` directions; the Nystrom
    # sketch keeps every column (its accuracy already grows with the sketch size).
    extra = oversample if method == "svd" else 0
    history = []
    if not adaptive:
        k = min(rank + extra, cap)
        sk.add(gauss(k))
        U, lam = sk.gram_eig()
        r = min(rank, U.shape[1])
        info = {"rank": r, "error_estimate": None, "history": history}
        return U[:, :r], lam[:r], {**info, "block_size": sk.block_size}

    # Adaptive: double the rank until the a-posteriori error estimate of the rank-r
    # truncation is small enough.
    r = min(rank, max_rank)
    k = min(r + extra, cap)
    sk.add(gauss(k))
    while True:
        U, lam = sk.gram_eig()
        r = min(r, U.shape[1])
        lam1 = float(lam[0]) if lam.numel() else 0.0
        nprobe = min(max(r, 10), cap - k) if k < cap else 10
        Om = gauss(nprobe)
        Y, res2 = sk.residual(Om, r)
        err = float(res2.max().sqrt())
        # SVD: ||(A - A_r) w|| probes ||A - A_r|| = ||A^T A - V_r S_r^2 V_r^T||^(1/2).
        err_h = err**2 if method == "svd" else err
        est = err_h / lam1 if lam1 > 0 else (0.0 if err_h == 0 else math.inf)
        history.append({"rank": r, "error_estimate": est})
        if est <= tol or r >= max_rank:
            break
        if k < cap:
            sk.add(Om, Y)
            k += nprobe
        r = min(2 * r, max_rank, k)
    U, lam = sk.gram_eig()
    info = {"rank": r, "error_estimate": est, "history": history, "block_size": sk.block_size}
    return U[:, :r], lam[:r], info
