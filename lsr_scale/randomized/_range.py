"""Randomized range finder and SVD on any LinearOperator (Halko-Martinsson-Tropp 2011)."""

from __future__ import annotations

import torch

from .._checks import (
    check_at_most,
    check_generator,
    check_nonnegative_int,
    check_positive_int,
)
from ..operators import LinearOperator, aslinearoperator
from ._blocks import blocked_apply
from ._rng import gaussian

__all__ = ["RangeFinder", "randomized_range_finder", "randomized_svd"]


def _orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q


class RangeFinder:
    """Orthonormal basis ``Q`` of the range of ``A``, grown block by block.

    Each :meth:`add` takes a block of test vectors ``Omega`` (``n x k``), samples
    ``Y = A Omega`` (after ``power_iters`` subspace iterations) and appends an orthonormal
    basis of the part of ``range(Y)`` not yet in ``Q`` (block Gram-Schmidt, twice, and once
    more for noise past the numerical rank, so ``Q`` stays orthonormal). ``Bt =
    A^T Q`` is kept alongside, computed for the new columns only, so ``A ~= Q Q^T A = Q Bt^T``
    and its SVD follow from small dense factorizations: a new block costs only its own
    products (Halko-Martinsson-Tropp 2011, Alg. 4.1, 4.4 and 5.1).
    :func:`randomized_range_finder`, :func:`randomized_svd` and :func:`lowrank_gram` (the
    Nystrom preconditioner's build) all run on it.

    Parameters
    ----------
    A : LinearOperator or anything :func:`lsr_scale.aslinearoperator` accepts
        The ``(m, n)`` operator; only ``A.matmat`` and ``A.rmatmat`` are used.
    power_iters : int
        Subspace iterations per block, ``Y <- A qr(A^T qr(Y))`` (each costs ``k`` more
        products with ``A^T`` and with ``A``); they sharpen the basis when the spectrum
        decays slowly.
    block_size : int, optional
        At most this many columns go through ``A.matmat`` / ``A.rmatmat`` at once (bounds the
        memory of Jacobian operators). Default: a whole block at once. A block that runs out
        of memory (``torch.OutOfMemoryError``) is halved and retried, with a
        ``RuntimeWarning``, and the smaller size is kept.

    Attributes
    ----------
    Q : torch.Tensor or None
        ``(m, k)`` orthonormal basis (None before the first :meth:`add`).
    block_size : int or None
        The block size in effect (smaller than the one given after running out of memory).

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> from lsr_scale.randomized import RangeFinder, gaussian
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(40, 6, generator=g, dtype=torch.float64) @ torch.randn(
    ...     6, 30, generator=g, dtype=torch.float64)
    >>> f = RangeFinder(A)
    >>> f.add(gaussian(30, 3, g, dtype=A.dtype, device=A.device))
    >>> f.add(gaussian(30, 3, g, dtype=A.dtype, device=A.device))
    >>> f.rank, bool(torch.linalg.norm(A - f.Q @ f.Bt.T) < 1e-10 * torch.linalg.norm(A))
    (6, True)
    """

    def __init__(self, A, *, power_iters: int = 0, block_size: int | None = None) -> None:
        self.A = aslinearoperator(A)
        self.power_iters = check_nonnegative_int(power_iters, "power_iters")
        if block_size is not None:
            block_size = check_positive_int(block_size, "block_size")
        self.block_size = block_size
        self.Q = None
        self._Bt = None
        self._svd_bt = None

    @property
    def rank(self) -> int:
        """Columns of ``Q`` so far."""
        return 0 if self.Q is None else int(self.Q.shape[1])

    def _apply(self, apply, X: torch.Tensor, what: str) -> torch.Tensor:
        """``apply(X)`` in blocks of ``block_size`` columns (halved when out of memory)."""
        Y, self.block_size = blocked_apply(apply, X, self.block_size, what=f"RangeFinder: {what}")
        return Y

    def sample(self, Omega: torch.Tensor) -> torch.Tensor:
        """``A Omega`` (blocked)."""
        return self._apply(self.A.matmat, Omega, "A.matmat")

    def add(self, Omega: torch.Tensor, Y: torch.Tensor | None = None) -> None:
        """Extend ``Q`` by the range of ``A Omega``; pass ``Y = A Omega`` if already known."""
        A = self.A
        if Y is None:
            Y = self.sample(Omega)
        # Y and Q live in A's row space: their QR and inner products go through A's row
        # hooks (plain torch unless the rows are sharded over processes)
        for _ in range(self.power_iters):
            Z = self._apply(A.rmatmat, A.row_orth(Y), "A.rmatmat")
            Y = self._apply(A.matmat, _orth(Z), "A.matmat")
        if self.Q is None:
            self.Q = A.row_orth(Y)
        else:
            for _ in range(2):
                Y = Y - self.Q @ A.row_reduce(self.Q.T @ Y)
            Q2 = A.row_orth(Y)
            # Past the numerical rank of A (or with power iterations, which turn Y towards
            # what Q already holds) what is left of Y is rounding noise, and the QR scales it
            # up into directions that are not orthogonal to Q: project those out once more.
            # While the block adds real directions this never triggers.
            C = A.row_reduce(self.Q.T @ Q2)
            if float(torch.linalg.matrix_norm(C, ord=2)) > torch.finfo(C.dtype).eps ** 0.5:
                Q2 = A.row_orth(Q2 - self.Q @ C)
            self.Q = torch.cat([self.Q, Q2], dim=1)
        self._svd_bt = None

    @property
    def Bt(self) -> torch.Tensor:
        """``A^T Q`` (``n x k``); the products for columns added since the last call run now."""
        k0 = 0 if self._Bt is None else self._Bt.shape[1]
        if k0 < self.rank:
            Qnew = self.Q if k0 == 0 else self.Q[:, k0:]
            Bt2 = self._apply(self.A.rmatmat, Qnew, "A.rmatmat")
            self._Bt = Bt2 if self._Bt is None else torch.cat([self._Bt, Bt2], dim=1)
        return self._Bt

    def svd(self, rank: int | None = None):
        """``(U, S, Vh)``: the SVD of ``Q Q^T A`` truncated to ``rank`` (default: all ``k``).

        From the small SVD ``Q^T A = Bt^T = Ub S Vh`` and ``U = Q Ub`` (Alg. 5.1).
        """
        rank = self.rank if rank is None else rank
        Ub, S, Vh = torch.linalg.svd(self.Bt.T, full_matrices=False)
        return self.Q @ Ub[:, :rank], S[:rank], Vh[:rank]

    def svd_in_place(self, rank: int | None = None):
        """:meth:`svd` computed over the storage of ``Bt``, which it consumes: besides it,
        nothing ``n x k`` is allocated (``Vh`` is a view of that storage). The finder cannot
        be used afterwards."""
        from ._lowrank import tall_svd_inplace

        rank = self.rank if rank is None else rank
        Bt = self.Bt.contiguous()
        self._Bt = self._svd_bt = None
        m, k = Bt.shape
        V, S, Zh = tall_svd_inplace(Bt.view(-1), m, k, rank, drop_zero=False)
        # Q^T A = Bt^T = Zh^T S V^T: U = Q Zh^T
        U = self.Q @ Zh.T.to(self.Q.dtype)
        self.Q = None
        return U, S.to(V.dtype), V.T

    def _factors(self):
        # Bt = A^T Q = V S W^T, so A ~= Q Q^T A = (Q W) S V^T.
        if self._svd_bt is None:
            V, S, Wt = torch.linalg.svd(self.Bt, full_matrices=False)
            self._svd_bt = (V, S, Wt.T)
        return self._svd_bt

    def gram_eig(self):
        """``(V, S^2)`` with ``A^T A ~= V diag(S^2) V^T``, eigenvalues descending."""
        V, S, _ = self._factors()
        return V, S.square()

    def residual(self, Omega: torch.Tensor, r: int):
        """``(A Omega, ||(A - A_r) omega_i||^2 per column)`` for the rank-``r`` truncation
        ``A_r = Q W_r S_r V_r^T``: the a-posteriori error probe (HMT 2011, sec. 4.3)."""
        Y = self.sample(Omega)
        V, S, W = self._factors()
        R = Y - self.Q @ (W[:, :r] @ (S[:r, None] * (V[:, :r].T @ Omega)))
        return Y, self.A.row_reduce(R.square().sum(dim=0))


def _check_args(A, rank, oversample, power_iters, generator, block_size):
    A = aslinearoperator(A)
    rank = check_positive_int(rank, "rank")
    check_at_most(rank, min(A.shape), "rank", "min(m, n)")
    oversample = check_nonnegative_int(oversample, "oversample")
    power_iters = check_nonnegative_int(power_iters, "power_iters")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    check_generator(generator)
    return A, rank, oversample, power_iters, generator, block_size


def _finder(A: LinearOperator, ell, power_iters, generator, block_size) -> RangeFinder:
    f = RangeFinder(A, power_iters=power_iters, block_size=block_size)
    f.add(gaussian(A.shape[1], ell, generator, dtype=A.dtype, device=A.device))
    return f


def randomized_range_finder(
    A, rank, oversample=10, power_iters=0, generator=None, *, block_size=None
) -> torch.Tensor:
    """Orthonormal basis ``Q`` approximately spanning the range of ``A``.

    Parameters
    ----------
    A : LinearOperator or anything :func:`lsr_scale.aslinearoperator` accepts
        The ``(m, n)`` operator; only ``A.matmat`` and ``A.rmatmat`` are used.
    rank : int
        Target rank, ``1 <= rank <= min(m, n)``.
    oversample : int
        Extra sample columns (``p``, default 10); ``Q`` has ``min(rank + p, m, n)`` columns.
    power_iters : int
        Subspace (power) iterations ``q``; each costs ``rank + p`` products with ``A^T`` and
        with ``A`` and sharpens the basis when the spectrum decays slowly.
    generator : torch.Generator, optional
        Source of the Gaussian test matrix (drawn in ``A.dtype`` on the generator's device,
        then moved to ``A.device``); None: torch's global RNG (see
        :func:`lsr_scale.randomized.resolve_generator`).
    block_size : int, optional
        At most this many columns go through ``A.matmat`` / ``A.rmatmat`` at once (bounds the
        memory of Jacobian operators). Default: all at once. Halved (with a
        ``RuntimeWarning``) when a block runs out of memory; see :class:`RangeFinder`.

    Returns
    -------
    torch.Tensor
        ``Q`` of shape ``(m, min(rank + oversample, m, n))`` with orthonormal columns, on
        ``A.device`` with ``A.dtype``.

    Notes
    -----
    Algorithm 4.4 of [1]_: ``Y = A Omega``, ``Q = qr(Y)``, and for each power iteration
    ``Q = qr(A qr(A^T Q))``; re-orthonormalizing between products keeps the small singular
    directions from being lost to rounding. With ``q`` power iterations the expected error
    ``||A - Q Q^T A||`` approaches ``sigma_{rank+1}`` like ``(.)^{1/(2q+1)}`` [1]_.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with randomness:
       Probabilistic algorithms for constructing approximate matrix decompositions",
       SIAM Review 53(2), 217-288, 2011.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(50, 3, generator=g, dtype=torch.float64) @ torch.randn(
    ...     3, 40, generator=g, dtype=torch.float64)
    >>> Q = ls.randomized_range_finder(A, rank=3, oversample=2, generator=g)
    >>> Q.shape
    torch.Size([50, 5])
    >>> bool(torch.linalg.norm(A - Q @ (Q.T @ A)) < 1e-10 * torch.linalg.norm(A))
    True
    """
    A, rank, oversample, power_iters, generator, block_size = _check_args(
        A, rank, oversample, power_iters, generator, block_size
    )
    ell = min(rank + oversample, *A.shape)
    with torch.no_grad():
        return _finder(A, ell, power_iters, generator, block_size).Q


def randomized_svd(A, rank, oversample=10, power_iters=0, generator=None, *, block_size=None):
    """Truncated SVD ``A ~ U diag(S) Vh`` of rank ``rank`` from randomized sampling.

    Parameters
    ----------
    A, rank, oversample, power_iters, generator, block_size
        As in :func:`randomized_range_finder`.

    Returns
    -------
    U : torch.Tensor
        ``(m, rank)``, orthonormal columns.
    S : torch.Tensor
        ``(rank,)``, the approximate singular values in descending order.
    Vh : torch.Tensor
        ``(rank, n)``, orthonormal rows.

    Notes
    -----
    Algorithm 5.1 of [1]_: ``Q`` from :func:`randomized_range_finder`, then
    ``B = Q^T A`` computed as ``(A^T Q)^T`` (``rank + oversample`` products with ``A^T``,
    blocked by ``block_size``), the SVD ``B = Ub S Vh`` and ``U = Q Ub``, truncated to
    ``rank``. The SVD of the ``n x (rank + oversample)`` matrix ``A^T Q`` runs over its own
    storage (:func:`~lsr_scale.randomized.tall_svd_inplace`: a TSQR in float64, then ``Vh``
    written in place), so the only ``n``-sized block alive is that one; ``Vh`` is a view of
    it. Total cost: ``(rank + oversample) (power_iters + 1)`` column products with
    ``A`` and as many with ``A^T``.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with randomness:
       Probabilistic algorithms for constructing approximate matrix decompositions",
       SIAM Review 53(2), 217-288, 2011.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(
    ...     2, 20, generator=g, dtype=torch.float64)
    >>> U, S, Vh = ls.randomized_svd(A, rank=2, generator=g)
    >>> U.shape, S.shape, Vh.shape
    (torch.Size([30, 2]), torch.Size([2]), torch.Size([2, 20]))
    >>> torch.allclose(U @ torch.diag(S) @ Vh, A)
    True
    """
    A, rank, oversample, power_iters, generator, block_size = _check_args(
        A, rank, oversample, power_iters, generator, block_size
    )
    ell = min(rank + oversample, *A.shape)
    with torch.no_grad():
        return _finder(A, ell, power_iters, generator, block_size).svd_in_place(rank)
