"""Randomized Nystrom / randomized-SVD right preconditioner for damped least squares."""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_nonnegative_int, check_positive_int, check_tolerance
from ..sketch._sketches import _resolve_generator
from ._common import LowRankOperator, Preconditioner, as_operator

__all__ = ["NystromPreconditioner", "lowrank_gram"]


def _orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q


def _extend_basis(Q: torch.Tensor | None, Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of ``[Q, Y]`` as ``[Q, Q2]`` (block Gram-Schmidt, twice)."""
    if Q is None:
        return _orth(Y)
    for _ in range(2):
        Y = Y - Q @ (Q.T @ Y)
    return torch.cat([Q, _orth(Y)], dim=1)


class _SVDSketch:
    """Randomized SVD of ``A`` grown block by block: ``A^T A ~= V diag(S^2) V^T``.

    Keeps ``Q`` (orthonormal basis of ``A Omega``) and ``Bt = A^T Q``; a new block of test
    vectors costs its JVPs and VJPs only (Halko-Martinsson-Tropp 2011, Alg. 4.1 / 5.1).
    """

    def __init__(self, A, power_iters: int) -> None:
        self.A, self.power_iters = A, power_iters
        self.Q = None
        self.Bt = None

    def residual(self, Omega, r):
        """``(A Omega, ||(A - A_r) omega_i||^2 per column)`` for the rank-``r`` truncation
        ``A_r = Q W_r S_r V_r^T``: the a-posteriori error probe."""
        Y = self.A.matmat(Omega)
        V, S, W = self._svd()
        R = Y - self.Q @ (W[:, :r] @ (S[:r, None] * (V[:, :r].T @ Omega)))
        return Y, R.square().sum(dim=0)

    def add(self, Omega, Y=None):
        A = self.A
        if Y is None:
            Y = A.matmat(Omega)
        for _ in range(self.power_iters):
            Y = A.matmat(_orth(A.rmatmat(_orth(Y))))
        Qnew = _extend_basis(self.Q, Y)
        k0 = 0 if self.Q is None else self.Q.shape[1]
        Q2 = Qnew[:, k0:]
        Bt2 = A.rmatmat(Q2)
        self.Q = Qnew
        self.Bt = Bt2 if self.Bt is None else torch.cat([self.Bt, Bt2], dim=1)

    def _svd(self):
        # Bt = A^T Q = V S W^T, so A ~= Q Q^T A = (Q W) S V^T.
        V, S, Wt = torch.linalg.svd(self.Bt, full_matrices=False)
        return V, S, Wt.T

    def eig(self):
        V, S, _ = self._svd()
        return V, S.square()


class _NystromSketch:
    """Randomized Nystrom approximation of ``H = A^T A`` with the stabilizing shift.

    ``H_nys = Y (Omega^T Y)^+ Y^T`` with ``Y = H Omega`` (Frangella-Tropp-Udell 2023, Alg. 2.1):
    ``nu = sqrt(m) eps ||Y||``, ``Y_nu = Y + nu Omega``, ``C = chol(Omega^T Y_nu)``,
    ``B = Y_nu C^-1``, ``B = U Sigma W^T``, ``Lambda = max(0, Sigma^2 - nu)``.
    """

    def __init__(self, A) -> None:
        self.A = A
        self.Omega = None
        self.Y = None
        self._U = self._lam = None

    def _H(self, X):
        return self.A.rmatmat(self.A.matmat(X))

    def residual(self, Omega, r):
        """``(H Omega, ||(H - H_r) omega_i||^2 per column)`` for the rank-``r`` truncation."""
        Y = self._H(Omega)
        U, lam = self.eig()
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

    def eig(self):
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
):
    """Randomized eigen-approximation ``A^T A ~= U diag(lam) U^T`` of rank ``rank``.

    Returns ``(U, lam, info)`` with ``U`` (m x rank) orthonormal, ``lam`` descending. See
    :class:`NystromPreconditioner` for the parameters; ``info`` holds ``rank``,
    ``error_estimate`` (relative, see Notes there) and ``history`` (per doubling).
    """
    A = as_operator(A)
    n, m = A.shape
    check_choice(method, ("svd", "nystrom"), "method")
    rank = check_positive_int(rank, "rank")
    oversample = check_nonnegative_int(oversample, "oversample")
    power_iters = check_nonnegative_int(power_iters, "power_iters")
    tol = check_tolerance(tol, "tol")
    cap = min(m, n) if method == "svd" else m
    max_rank = cap if max_rank is None else min(check_positive_int(max_rank, "max_rank"), cap)
    if method == "nystrom" and power_iters:
        raise ValueError("power_iters: expected 0 with method='nystrom', got {power_iters}")
    gen = _resolve_generator(generator)

    def gauss(k):
        G = torch.randn(m, k, generator=gen, device=gen.device, dtype=torch.float64)
        return G.to(dtype=A.dtype, device=A.device)

    sk = _SVDSketch(A, power_iters) if method == "svd" else _NystromSketch(A)
    # With the SVD the oversampled columns sharpen the top `rank` directions; the Nystrom
    # sketch keeps every column (its accuracy already grows with the sketch size).
    extra = oversample if method == "svd" else 0
    history = []
    if not adaptive:
        k = min(rank + extra, cap)
        sk.add(gauss(k))
        U, lam = sk.eig()
        r = min(rank, U.shape[1])
        return U[:, :r], lam[:r], {"rank": r, "error_estimate": None, "history": history}

    # Adaptive: double the rank until the a-posteriori error estimate of the rank-r
    # truncation is small enough. The probe vectors of each round become the next block of
    # test vectors, so the estimate costs no extra products.
    r = min(rank, max_rank)
    k = min(r + extra, cap)
    sk.add(gauss(k))
    while True:
        U, lam = sk.eig()
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
    U, lam = sk.eig()
    return U[:, :r], lam[:r], {"rank": r, "error_estimate": est, "history": history}


class NystromPreconditioner(Preconditioner):
    r"""Randomized low-rank right preconditioner for ``min ||A x - b||^2 + damp^2 ||x||^2``.

    Builds ``A^T A ~= U diag(lam) U^T`` (rank ``l``) and applies

    .. math::  M = U \operatorname{diag}\Big(\sqrt{\tfrac{\lambda_l + \mu}{\lambda_i + \mu}}\Big)
               U^T + (I - U U^T), \qquad \mu = \mathrm{damp}^2,

    i.e. ``M = (lambda_l + mu)^{1/2} P^{-1/2}`` for the Nystrom preconditioner
    ``P = U (Lambda + mu I) U^T / (lambda_l + mu) + (I - U U^T)`` of Frangella-Tropp-Udell.
    With ``x = M y`` the columns of ``[A; damp I] M`` along ``U`` all get the norm
    ``sqrt(lambda_l + mu)``, so the top ``l`` singular values collapse into one cluster and
    the rest are left as they are (they were ``<= sqrt(lambda_l + mu)`` already). LSMR on
    ``A M`` then needs about as many iterations as the spread of the tail, not of the whole
    spectrum.

    Parameters
    ----------
    A : LinearOperator (n x m) or anything :func:`lsr_scale.aslinearoperator` accepts.
    rank : int
        Rank ``l`` (the starting rank when ``adaptive``).
    damp : float
        The damping of the least-squares problem (``mu = damp^2`` in the formula).
    generator : torch.Generator, optional
        Source of the test vectors; ``None`` draws a fresh seed.
    oversample : int
        Extra test vectors for ``method="svd"`` (the top ``rank`` are kept). Default 10.
    method : {"svd", "nystrom"}
        ``"svd"`` (default): randomized SVD of ``A`` itself, ``A^T A ~= V S^2 V^T`` from
        ``l + p`` JVPs and ``l + p`` VJPs (the range finder one-shot LSR uses). It never forms
        ``A^T A``, so in float32 it resolves singular values down to about ``eps * sigma_1``.
        ``"nystrom"``: Nystrom approximation of ``A^T A`` from ``Y = A^T A Omega`` (``l`` JVP+VJP
        pairs) with the stabilizing shift ``nu = sqrt(m) eps ||Y||``. It squares the condition
        number: in float32 only singular values above about ``sqrt(eps) sigma_1 ~ 3e-4
        sigma_1`` are captured. Use it in float64.
    power_iters : int
        Power (subspace) iterations for ``method="svd"`` (each costs ``l + p`` more pairs).
    adaptive : bool
        Double the rank (from ``rank``) until the estimated relative error
        ``||A^T A - U Lambda U^T|| / lambda_1`` is ``<= tol`` or the rank reaches ``max_rank``.
    tol : float
        Target of the adaptive rank; default ``1e-8``.
    max_rank : int, optional
        Cap of the adaptive rank; default ``min(n, m)``.
    basis_dtype : torch.dtype, optional
        Storage dtype of ``U`` (e.g. ``torch.bfloat16`` halves memory against float32); it is
        cast to the working dtype per product. Default: ``A.dtype``. See Notes.

    Attributes
    ----------
    U : torch.Tensor
        ``(m, l)`` basis in the working dtype (``blocks`` holds what is stored: the leading
        columns in the working dtype and the rest in ``basis_dtype``).
    rank_full_precision : int
        Columns kept in the working dtype (all of them without ``basis_dtype``).
    d : torch.Tensor
        ``sqrt((lambda_l + mu) / (lambda_i + mu))``, the eigenvalues of ``M`` on ``range(U)``
        (1 on its complement).
    gamma : float
        ``||U^T U - I||`` of the stored basis (0 unless ``basis_dtype`` is lower).
    eigenvalues : torch.Tensor
        ``lam`` (descending), approximating the top eigenvalues of ``A^T A``.
    rank : int
        Final rank ``l``.
    error_estimate : float or None
        Final adaptive error estimate (None when not adaptive).
    rank_history : list of dict
        Ranks tried and their estimates (adaptive).
    build_time, build_matvecs, build_rmatvecs
        See :class:`~lsr_scale.precond.Preconditioner`.

    Notes
    -----
    *Adaptive error estimate.* Each round draws ``r`` fresh Gaussian vectors ``w`` and uses
    ``max_w ||(I - Q Q^T) A w||^2`` (SVD) or ``max_w ||(A^T A - H_approx) w||`` (Nystrom),
    divided by ``lambda_1``: the a-posteriori estimate of Halko-Martinsson-Tropp (2011, sec.
    4.3) without its safety factor. Those same vectors then enter the sketch, so doubling
    the rank costs only the products of the new test vectors.

    *Low-precision basis.* A basis rounded to bfloat16 (unit roundoff ``u = 2^-8``) is
    orthonormal only to about ``gamma = ||U_b^T U_b - I||`` (a few 1e-3; stored as
    ``gamma``), and its span is off by about ``u``. Two consequences, two remedies:

    * Applied naively, ``M = I + U_b diag(d - 1) U_b^T`` is off by about ``gamma`` in every
      direction, which destroys the preconditioner (and its definiteness) wherever
      ``d_i < gamma``. So the build factors ``U_b^T U_b = R^T R`` in float64 and applies
      ``M = I + U_b K U_b^T`` with ``K = R^-1 diag(d - 1) R^-T``: exactly the intended
      operator for the orthonormal basis ``U_b R^-1`` of the rounded subspace.
    * A direction with ``sigma_i`` leaks about ``u sigma_i`` into the complement, unscaled;
      above ``sigma_l`` that undoes the clustering. So the leading directions with
      ``d_i < 4 u`` (``sigma_i > sigma_l / (4u)``) stay in the working dtype
      (``rank_full_precision`` of them) and only the rest is rounded. The memory saving is
      therefore largest when the top of the spectrum is not too steep.

    This path casts the rounded columns to the working dtype in row chunks (no
    full-precision copy is held) and does not go through ``lowrank_apply``.

    References
    ----------
    .. [1] Z. Frangella, J. A. Tropp, M. Udell, "Randomized Nystrom preconditioning",
       SIAM J. Matrix Anal. Appl. 44(2), 2023.
    .. [2] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness:
       probabilistic algorithms for constructing approximate matrix decompositions",
       SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(200, 50, dtype=torch.float64, generator=g) * torch.logspace(0, -6, 50,
    ...     dtype=torch.float64)
    >>> M = ls.precond.NystromPreconditioner(A, rank=20, generator=g)
    >>> M.shape, M.build_matvecs, M.build_rmatvecs
    ((50, 50), 30, 30)
    """

    name = "nystrom"

    def __init__(
        self,
        A,
        rank,
        damp=0.0,
        *,
        generator=None,
        oversample=10,
        method="svd",
        power_iters=0,
        adaptive=False,
        tol=1e-8,
        max_rank=None,
        basis_dtype=None,
    ) -> None:
        A = as_operator(A)
        damp = check_tolerance(damp, "damp")
        if basis_dtype is not None and (
            not isinstance(basis_dtype, torch.dtype) or not basis_dtype.is_floating_point
        ):
            raise TypeError(f"basis_dtype: expected a floating torch.dtype, got {basis_dtype!r}")
        super().__init__(A.shape[1], A.dtype, A.device)
        self.damp = damp
        self.method = method
        with torch.no_grad(), self._recording(A):
            U, lam, info = lowrank_gram(
                A,
                rank,
                method=method,
                oversample=oversample,
                power_iters=power_iters,
                generator=generator,
                adaptive=adaptive,
                tol=tol,
                max_rank=max_rank,
            )
            self._set_basis(U, lam, basis_dtype)
        self.rank = int(info["rank"])
        self.error_estimate = info["error_estimate"]
        self.rank_history = info["history"]

    def _set_basis(self, U, lam, basis_dtype):
        mu = self.damp**2
        self.eigenvalues = lam
        lam_l = lam[-1] if lam.numel() else lam.new_zeros(())
        if float(lam_l + mu) > 0:
            d = torch.sqrt((lam_l + mu) / (lam + mu))
        else:  # exactly rank deficient and undamped: keep the basis, scale nothing
            d = torch.ones_like(lam)
        self.d = d
        self.c = 1.0
        self.gamma = 0.0
        self._Rinv = None
        self.rank_full_precision = int(U.shape[1])
        if basis_dtype is None or basis_dtype == self.dtype:
            self.blocks = [U]
            self._op = self._lowrank(d)
            return
        # Directions with d_i < 4 u (u: unit roundoff of basis_dtype) carry singular values
        # above sigma_l / (4 u); rounded, they would leak more than sigma_l into the
        # complement. They stay in the working dtype; the rest is rounded.
        u = torch.finfo(basis_dtype).eps / 2
        k_hi = int((d < 4 * u).sum())
        self.rank_full_precision = k_hi
        self.blocks = [U[:, :k_hi].contiguous(), U[:, k_hi:].to(basis_dtype).contiguous()]
        # The rounded basis is orthonormal only to gamma = ||U_b^T U_b - I||. With
        # G = U_b^T U_b = R^T R, Q = U_b R^-1 is orthonormal and
        # I + Q diag(d - 1) Q^T = I + U_b K U_b^T with K = R^-1 diag(d - 1) R^-T.
        ell = U.shape[1]
        G = torch.zeros((ell, ell), dtype=torch.float64, device=self.device)
        for i in range(0, U.shape[0], 65536):
            Ui = torch.cat([B[i : i + 65536].to(torch.float64) for B in self.blocks], dim=1)
            G += Ui.T @ Ui
        eye = torch.eye(ell, dtype=torch.float64, device=self.device)
        self.gamma = float(torch.linalg.matrix_norm(G - eye, ord=2))
        R = torch.linalg.cholesky(G, upper=True)
        self._Rinv = torch.linalg.solve_triangular(R, eye, upper=True)
        self._op = self._lowrank(d)

    @property
    def U(self) -> torch.Tensor:
        """The ``(m, l)`` basis in the working dtype (a copy when it is stored split)."""
        if len(self.blocks) == 1:
            return self.blocks[0]
        return torch.cat([B.to(self.dtype) for B in self.blocks], dim=1)

    @property
    def basis_nbytes(self) -> int:
        """Bytes the stored basis takes."""
        return sum(B.numel() * B.element_size() for B in self.blocks)

    def _lowrank(self, d):
        if self._Rinv is None:
            return LowRankOperator(self.blocks[0], d, 1.0, dtype=self.dtype)
        Ri = self._Rinv
        core = Ri @ ((d.to(torch.float64) - 1.0)[:, None] * Ri.T)
        return LowRankOperator(self.blocks, d, 1.0, dtype=self.dtype, core=core)

    def _matvec(self, x):
        return self._op._matvec(x)

    _rmatvec = _matvec
    _matmat = _matvec
    _rmatmat = _matvec

    def inverse_operator(self):
        """The FTU Nystrom preconditioner for CG on ``A^T A + damp^2 I``.

        Returns the operator ``P^-1 = (lambda_l + mu) U (Lambda + mu I)^-1 U^T + (I - U U^T)``
        (``= M^2``), to pass as ``M`` to :func:`lsr_scale.solvers._cg.cg` on
        ``A^T A + damp^2 I``.
        """
        return self._lowrank(self.d.square())

    def info(self) -> dict:
        out = super().info()
        out.update(
            method=self.method,
            rank=self.rank,
            damp=self.damp,
            error_estimate=self.error_estimate,
            basis_dtype=str(self.blocks[-1].dtype).replace("torch.", ""),
            rank_full_precision=self.rank_full_precision,
            basis_nbytes=self.basis_nbytes,
        )
        return out
