"""Randomized range finder and SVD on any LinearOperator (Halko-Martinsson-Tropp 2011)."""

from __future__ import annotations

import torch

from .._checks import check_nonnegative_int, check_positive_int, describe
from ..operators import LinearOperator, aslinearoperator

__all__ = ["randomized_range_finder", "randomized_svd"]


def _check_args(A, rank, oversample, power_iters, generator, block_size):
    A = aslinearoperator(A)
    m, n = A.shape
    rank = check_positive_int(rank, "rank")
    if rank > min(m, n):
        raise ValueError(f"rank: expected <= min(m, n) = {min(m, n)}, got {rank}")
    oversample = check_nonnegative_int(oversample, "oversample")
    power_iters = check_nonnegative_int(power_iters, "power_iters")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    if generator is None:
        # A fresh generator with a non-deterministic seed: the global RNG is left alone.
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {describe(generator)}")
    return A, rank, oversample, power_iters, generator, block_size


def _blocked(apply, X: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """``apply(X)`` with at most ``block_size`` columns of ``X`` per call."""
    k = X.shape[1]
    if block_size is None or block_size >= k:
        return apply(X)
    return torch.cat(
        [apply(X[:, j : j + block_size].contiguous()) for j in range(0, k, block_size)], dim=1
    )


def _orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q


def _range(A: LinearOperator, ell, power_iters, generator, block_size) -> torch.Tensor:
    n = A.shape[1]
    omega = torch.randn(n, ell, generator=generator, device=generator.device, dtype=A.dtype)
    omega = omega.to(A.device)
    Q = _orth(_blocked(A.matmat, omega, block_size))
    for _ in range(power_iters):
        Z = _orth(_blocked(A.rmatmat, Q, block_size))
        Q = _orth(_blocked(A.matmat, Z, block_size))
    return Q


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
        Source of the Gaussian test matrix, drawn on the generator's device and then moved to
        ``A.device``. The global RNG is never used. When None, a fresh generator with a
        non-deterministic seed is created (results then differ between calls).
    block_size : int, optional
        At most this many columns go through ``A.matmat`` / ``A.rmatmat`` at once (bounds the
        memory of Jacobian operators). Default: all at once.

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
        return _range(A, ell, power_iters, generator, block_size)


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
    blocked by ``block_size``), the small SVD ``B = Ub S Vh`` and ``U = Q Ub``, truncated to
    ``rank``. Total cost: ``(rank + oversample) (power_iters + 1)`` column products with
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
        Q = _range(A, ell, power_iters, generator, block_size)
        B = _blocked(A.rmatmat, Q, block_size).T
        Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
        U = Q @ Ub[:, :rank]
    return U, S[:rank], Vh[:rank]
