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
from ._rng import gaussian, resolve_generator

__all__ = ["lowrank_gram", "lowrank_gram_streamed", "tall_svd_inplace"]


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


# Bytes of one float64 row chunk of the streamed build's dense passes over the m x k basis
# (at least 2k rows, so the stacked TSQR costs at most 1.5x one QR of the whole). A pass holds
# about three chunks at once (the chunk, its QR's copy and factor); 8192 rows, the fixed size
# before, took about 70 MiB at k = 310, the peak of a budgeted refine (issue 17).
_STREAM_BYTES = 8 << 20


def stream_rows(k: int) -> int:
    """Rows per chunk of :func:`tall_svd_inplace`'s passes over an ``m x k`` basis."""
    return max(2 * k, _STREAM_BYTES // (8 * max(1, k)))


def lowrank_gram_streamed(
    A,
    rank,
    *,
    oversample=10,
    generator=None,
    block_size=None,
    storage_dtype=None,
):
    """The randomized-SVD eigen-approximation of :func:`lowrank_gram`, memory-bounded.

    Returns ``(U, lam, info)`` as :func:`lowrank_gram` with ``method="svd"``, except that
    ``U`` is stored in ``storage_dtype`` (default ``A.dtype``) and is orthonormal only to
    that precision. It never holds two ``m x k`` blocks (``k = rank + oversample``), nor
    one in a precision wider than ``storage_dtype``:

    1. the test vectors are drawn one column at a time (``block_size`` columns per product
       with ``A``), so the ``m x k`` Gaussian matrix is never whole;
    2. ``Q = orth(A Omega)`` (``n x k``), then ``Bt = A^T Q`` column block by column block,
       each block rounded into one ``m x k`` buffer of ``storage_dtype``;
    3. ``Bt = Q_B R`` by a QR of row chunks stacked on the running ``R`` (float64, TSQR),
       and ``R = P S Z^T`` (a ``k x k`` SVD): the singular values ``S`` are as accurate as
       the dense build's (for the rounded ``Bt``);
    4. ``U = Bt Z_r S_r^-1`` is written over the buffer, row chunk by row chunk, in place.

    Directions with ``s_i = 0`` are dropped.
    The rounding of ``Bt`` to ``storage_dtype`` perturbs ``A^T A`` by about
    ``eps(storage_dtype) sigma_1^2``: directions with ``sigma_i`` near
    ``eps(storage_dtype) sigma_1`` are approximated less well than by the dense build,
    which holds ``Bt`` and its SVD factor in the working precision (twice ``m x k``).
    """
    A = aslinearoperator(A)
    n, m = A.shape
    rank = check_positive_int(rank, "rank")
    oversample = check_nonnegative_int(oversample, "oversample")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    check_generator(generator)
    store = A.dtype if storage_dtype is None else storage_dtype
    k = min(rank + oversample, n, m)
    gen = resolve_generator(generator)
    dev = A.device
    size = k if block_size is None else block_size
    # 1. Y = A Omega, Omega drawn a column at a time (the same numbers whatever the blocks),
    #    each block written into one n x k result (no list of blocks and their concatenation)
    Y, j0 = None, 0
    while j0 < k:  # a while loop: an out-of-memory halving of size applies from the next block
        j1 = min(k, j0 + size)
        draws = [
            torch.randn(m, generator=gen, device=gen.device, dtype=torch.float64)
            for _ in range(j0, j1)
        ]
        Om = torch.stack(draws, dim=1).to(dtype=A.dtype, device=dev)
        del draws
        Yb, size_new = blocked_apply(A.matmat, Om, size, what="Nystrom (streamed): A.matmat")
        del Om
        if Y is None:
            Y = Yb.new_empty((Yb.shape[0], k))
        Y[:, j0:j1] = Yb
        del Yb
        size = size_new or size
        j0 = j1
    Q = A.row_orth(Y)
    del Y
    # 2. Bt = A^T Q into one buffer of the storage dtype
    buf = torch.empty(m * k, dtype=store, device=dev)
    Bt = buf.view(m, k)
    j0 = 0
    while j0 < k:
        j1 = min(k, j0 + size)
        Z, size_new = blocked_apply(
            A.rmatmat, Q[:, j0:j1].contiguous(), size, what="Nystrom (streamed): A.rmatmat"
        )
        size = size_new or size
        Bt[:, j0:j1] = Z.to(store)
        del Z
        j0 = j1
    del Q
    # 3.-4. the SVD of Bt, its right factor written over the buffer
    U, S, _ = tall_svd_inplace(buf, m, k, rank)
    lam = S.square().to(A.dtype)
    info = {"rank": int(S.numel()), "error_estimate": None, "history": [], "block_size": block_size}
    return U, lam, info


def tall_svd_inplace(buf: torch.Tensor, m: int, k: int, rank: int, *, drop_zero: bool = True):
    """``(V, S, Zh)``: the top ``r <= rank`` left singular vectors and values of the ``m x k``
    matrix ``B`` stored row-major in the flat buffer ``buf``, ``V`` written over it, and the
    right singular vectors ``Zh`` (``r x k``): ``B ~= V diag(S) Zh``.

    ``B = Q_B R`` by a QR of row chunks stacked on the running ``R`` (float64, TSQR), then
    ``R = P S Z^T`` (``k x k``) and ``V = B Z_r S_r^-1``, computed row chunk by row chunk and
    stored in place: chunk ``i`` is read before it is written, and its new rows
    ``[i r, (i + c) r)`` lie below the old rows of the chunks still to come. ``V`` is an
    ``m x r`` view of the front of ``buf`` (its dtype); ``S`` and ``Zh`` are float64.
    With ``drop_zero``, directions with ``S = 0`` are dropped (``r`` at least 1); without it
    ``r = rank`` (a zero ``S`` gives a zero column).
    Nothing ``m x k`` is allocated besides ``buf``.
    """
    f64 = torch.float64
    B = buf[: m * k].view(m, k)
    step = stream_rows(k)
    R = torch.zeros((0, k), dtype=f64, device=buf.device)
    for i in range(0, m, step):
        R = torch.linalg.qr(torch.cat([R, B[i : i + step].to(f64)]), mode="r").R
    _, S, Zh = torch.linalg.svd(R)
    r = min(rank, k)
    if drop_zero:
        r = max(1, min(r, int((S > 0).sum())))
    T = Zh[:r].T / S[:r].clamp_min(torch.finfo(f64).tiny)  # k x r
    for i in range(0, m, step):
        i1 = min(m, i + step)
        new = (buf[i * k : i1 * k].view(i1 - i, k).to(f64) @ T).to(buf.dtype)
        buf[i * r : i1 * r] = new.reshape(-1)
    return buf[: m * r].view(m, r), S[:r], Zh[:r]
