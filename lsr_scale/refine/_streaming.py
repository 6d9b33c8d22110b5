"""Memory-bounded subspace LSR: the range finder and the reduced problem streamed over row blocks.

At the paper's ranks (k = 9,000 on the Burgers DeepONet, n = 128,000 rows, m = 115,841
parameters) the dense route stores two n x k matrices (the sketch ``G0 Omega`` and
``G0 P``: 9.2 GB each in float64). Here neither is stored: only m x k (the basis, float32
if asked) and k x k (Grams) live whole; an n x k matrix exists one row block at a time.

**Range finder** (:func:`streamed_basis`). For each batch of test-vector columns,
``Z_j = G0^T (G0 Omega_j)`` (the operator streams both products over its row blocks, so at
most ``n x batch`` exists); ``G_Y = Y^T Y = Omega^T Z`` needs no ``Y``. With
``G_Y = R_Y^T R_Y``, ``Q = Y R_Y^{-1}`` is the orthonormal sketch basis the dense route
stores and ``B^T = G0^T Q = Z R_Y^{-1}``: the dense randomized SVD's matrix, without ``Q``.
The basis is ``P = B^T R_B^{-1}`` (``R_B``: Cholesky of ``B B^T``), orthonormal, whose first
``j`` columns span ``range(B^T[:, :j])``: the subspace of a randomized SVD with ``j`` test
vectors, for every ``j`` at once. So rank ``k`` here is the dense route with ``rank=k,
oversample=0`` (same generator, same subspace: ``tests/test_streaming.py`` checks the
solutions agree to 1e-7), and one run gives every smaller rank. No ``m x k`` SVD or QR and
no ``k x k`` eigendecomposition runs: two Cholesky factorizations, two Grams and two
triangular solves. Its limit: ``G_Y`` squares the sketch's conditioning, so directions below
about ``1e-8 sigma_1`` (float64) are not resolved; the rank is capped there (``info``).

**Reduced problem** (:func:`reduced_gram`, :func:`solve_nested`). ``C = (G0 P)^T (G0 P)``
a batch of columns at a time (``P^T G0^T (G0 P_j)``: one JVP and one VJP per column) and
``r = P^T G0^T b``, in float64. Chosen over an incremental QR of ``G0 P``
(:func:`incremental_qr_reduced`) and a truncated eigendecomposition of ``C``
(:func:`solve_gram_eigh`), which agree with it and with the dense
:func:`~lsr_scale.refine.solve_reduced` to 1e-7 at small k (tests; ``docs/results.md``): with
``P`` orthonormal, ``G0 P`` is as well conditioned as ``G0`` on the subspace, and the Gram's
Cholesky ``C = L L^T`` is *nested*: ``y = L^{-1} r`` gives the linearized training loss
``||b||^2 - ||y[:j]||^2`` of every rank ``j`` for free (the authors choose k by it), at
``k^3 / 3`` flops where an eigendecomposition costs ~9 k^3 and the incremental QR ~4 n k^2
with ``n_block x k`` memory.

**Precision.** Products and accumulations are in the operator's dtype (float64 for these
runs); the stored basis may be float32 (``basis_dtype``): every later use (``G0 P``,
``delta = P c``) reads the same rounded ``P``, so the reduced problem stays exact for the
stored subspace.

**Fraction.** ``fraction=p`` refines a random subset of ``round(p m)`` parameter entries
(the authors' p), drawn from the generator before the test vectors; the others stay at
``theta0``. Products cost the same, the m x k memory shrinks by p.
"""

from __future__ import annotations

import torch

from ..operators import LinearOperator
from ..randomized import gaussian
from ..randomized._rng import resolve_generator

__all__ = [
    "ColumnMask",
    "draw_mask",
    "streamed_basis",
    "reduced_gram",
    "solve_nested",
    "solve_gram_eigh",
    "incremental_qr_reduced",
    "nested_cholesky",
]

#: Relative pivot below which a nested Cholesky stops (the rest is rounding noise).
_PIVOT_TOL = 1e3 * torch.finfo(torch.float64).eps


def draw_mask(m: int, fraction: float, generator) -> torch.Tensor:
    """Sorted indices of ``round(fraction * m)`` parameter entries (at least 1), drawn
    without replacement from ``generator``."""
    count = max(1, min(m, int(round(fraction * m))))
    gen = resolve_generator(generator)
    perm = torch.randperm(m, generator=gen, device=gen.device)
    return perm[:count].sort().values


class ColumnMask(LinearOperator):
    """``J E`` for a Jacobian ``J`` (n x m) and the embedding ``E`` of the entries ``idx``.

    ``matmat`` zero-fills the other entries of the tangents; ``rmatmat`` keeps ``idx`` of the
    gradients. Products are counted on ``J``.
    """

    def __init__(self, J, idx: torch.Tensor) -> None:
        super().__init__((J.shape[0], int(idx.numel())), J.dtype, J.device)
        self.J, self.idx = J, idx.to(J.device)

    def embed(self, V: torch.Tensor) -> torch.Tensor:
        out = V.new_zeros((self.J.shape[1],) + tuple(V.shape[1:]))
        out[self.idx] = V
        return out

    def _matvec(self, x):
        return self.J.matvec(self.embed(x))

    def _rmatvec(self, y):
        return self.J.rmatvec(y)[self.idx]

    def _matmat(self, X):
        return self.J.matmat(self.embed(X))

    def _rmatmat(self, Y):
        return self.J.rmatmat(Y)[self.idx]


def nested_cholesky(G: torch.Tensor, tol: float = _PIVOT_TOL):
    """Lower Cholesky factor of the leading block of ``G`` that is numerically definite.

    Returns ``(L, r)``: ``L`` is ``r x r`` with ``L L^T = G[:r, :r]``, where ``r`` stops
    before the first pivot ``L_jj^2 < tol * G_jj`` (the new column adds only rounding
    noise) or the first failure. Leading blocks of a Cholesky factor are the factors of
    the leading blocks, so ``L[:j, :j]`` serves every rank ``j <= r``.
    """
    G = 0.5 * (G + G.T)
    L, info = torch.linalg.cholesky_ex(G)
    r = G.shape[0] if int(info) == 0 else int(info) - 1
    if r:
        rel = torch.diagonal(L)[:r].square() / torch.diagonal(G)[:r].clamp_min(1e-300)
        bad = torch.nonzero(~(rel >= tol))
        if bad.numel():
            r = int(bad[0])
    if r < G.shape[0]:
        L = torch.linalg.cholesky(G[:r, :r]) if r else G.new_zeros(0, 0)
    return L, r


def _right_solve_rows(X: torch.Tensor, R: torch.Tensor, rows: int = 8192) -> None:
    """``X <- X R^{-1}`` in place (``R`` upper triangular), a slab of rows at a time."""
    for s in range(0, X.shape[0], rows):
        X[s : s + rows] = torch.linalg.solve_triangular(R, X[s : s + rows], upper=True, left=False)


def _batches(k: int, batch: int | None):
    step = batch or max(k, 1)
    return [slice(j, min(j + step, k)) for j in range(0, k, step)]


def streamed_basis(
    J,
    rank: int,
    *,
    generator=None,
    batch: int | None = 64,
    basis_dtype: torch.dtype | None = None,
):
    """Orthonormal ``m x r`` basis ``P`` of the randomized range of ``G0^T``, streamed.

    ``J`` is the (possibly masked) Jacobian operator. ``r <= rank`` (smaller only where the
    sketch reaches the float64 Gram's resolution). Column ``j`` of ``P`` completes the
    subspace of a randomized SVD with ``j`` test vectors drawn from ``generator`` (as
    :func:`~lsr_scale.randomized_svd` draws them). Returns ``(P, info)``; ``info`` holds
    ``rank``, ``sketch_rank`` and ``r_diag`` (the diagonal of ``R_B``: singular-value-like
    magnitudes in sample order).
    """
    m, dt = J.shape[1], J.dtype
    Omega = gaussian(m, rank, generator, dtype=dt, device=J.device)
    Z = torch.empty(m, rank, dtype=dt, device=J.device)
    for sl in _batches(rank, batch):
        Z[:, sl] = J.rmatmat(J.matmat(Omega[:, sl].contiguous()))  # G0^T (G0 Omega)
    GY = Omega.T @ Z  # = Y^T Y with Y = G0 Omega, never formed
    del Omega
    LY, r1 = nested_cholesky(GY)
    del GY
    Z = Z[:, :r1].contiguous() if r1 < rank else Z
    _right_solve_rows(Z, LY.T)  # Z <- Z R_Y^{-1} = B^T = G0^T Q
    GB = Z.T @ Z
    LB, r = nested_cholesky(GB)
    del GB
    if r < Z.shape[1]:
        Z = Z[:, :r].contiguous()
    _right_solve_rows(Z, LB.T)  # P = B^T R_B^{-1}: orthonormal, nested
    P = Z if basis_dtype is None or basis_dtype == Z.dtype else Z.to(basis_dtype)
    info = {"rank": r, "sketch_rank": r1, "r_diag": torch.diagonal(LB).detach().cpu()}
    return P, info


def _t_matmul_rows(P: torch.Tensor, W: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """``P^T W`` in float64, ``P`` converted a slab of rows at a time (it may be float32)."""
    acc = torch.float64
    if P.dtype == acc:
        return P.T @ W.to(acc)
    out = None
    for s in range(0, P.shape[0], rows):
        part = P[s : s + rows].to(acc).T @ W[s : s + rows].to(acc)
        out = part if out is None else out.add_(part)
    return out


def reduced_gram(J, P: torch.Tensor, b: torch.Tensor, *, batch: int | None = 64):
    """``(C, r, ||b||^2)`` with ``C = (G0 P)^T (G0 P)`` and ``r = (G0 P)^T b``, in float64.

    ``G0 P`` is never stored: a batch of columns at a time, ``C[:, j] = P^T G0^T (G0 P_j)``
    (the operator streams each product over its row blocks). ``P`` may be stored in a lower
    precision; it is converted to float64 on the fly (a batch of columns for the products,
    a slab of rows for ``P^T``), so the Gram is accumulated in float64 either way.
    """
    k, acc = P.shape[1], torch.float64
    C = torch.empty(k, k, dtype=acc, device=P.device)
    for sl in _batches(k, batch):
        W = J.rmatmat(J.matmat(P[:, sl].to(J.dtype).contiguous()))
        C[:, sl] = _t_matmul_rows(P, W)
    r = _t_matmul_rows(P, J.rmatvec(b)[:, None])[:, 0]
    bb = b.to(acc)
    return 0.5 * (C + C.T), r, float(bb @ bb)


def solve_nested(C, r, bb, ranks):
    """Coefficients of ``min ||A c - b||`` on the leading ``j`` columns for each ``j`` in
    ``ranks``, from the Gram ``C = A^T A``, ``r = A^T b`` and ``bb = ||b||^2``.

    Returns ``(coefs, info)``: ``info`` holds ``rank_cap`` (the largest numerically usable
    rank, see :func:`nested_cholesky`) and ``train_loss``, ``||A c_j - b||^2`` for every
    ``j = 1..rank_cap`` (``bb - ||L^{-1} r||^2`` cumulated: free for all ranks).
    """
    L, cap = nested_cholesky(C)
    y = torch.linalg.solve_triangular(L, r[:cap, None], upper=False)[:, 0] if cap else r[:0]
    train_loss = (bb - torch.cumsum(y.square(), 0)).clamp_min(0)
    coefs = {}
    for j in sorted({int(j) for j in ranks}):
        jj = min(j, cap)
        coefs[j] = (
            torch.linalg.solve_triangular(L[:jj, :jj].T, y[:jj, None], upper=True)[:, 0]
            if jj
            else r.new_zeros(0)
        )
    return coefs, {"rank_cap": cap, "train_loss": train_loss.cpu()}


def solve_gram_eigh(C, r, rcond: float | None = None, n: int = 1):
    """The alternative reduced solve: a truncated eigendecomposition of the Gram (one rank).

    Eigenvalues below ``rcond^2 * lambda_max`` are dropped (``rcond`` as in
    :func:`~lsr_scale.refine.solve_reduced`, default ``eps * max(n, k)``).
    """
    lam, W = torch.linalg.eigh(C)
    if rcond is None:
        rcond = torch.finfo(C.dtype).eps * max(n, C.shape[0])
    keep = lam > (rcond**2) * lam[-1]
    return W[:, keep] @ ((W[:, keep].T @ r) / lam[keep])


def incremental_qr_reduced(J, P: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``min ||G0 P c - b||`` by an incremental QR of ``[G0 P, b]`` over row blocks.

    Keeps only the ``(k+1) x (k+1)`` triangular factor: each row block is stacked under it
    and re-factored. About four times the Gram route's flops and ``n_block x k`` memory;
    kept to measure the Gram route against.
    """
    k, R = P.shape[1], None
    for rows, A in J.matmat_blocks(P.to(J.dtype)):
        Ab = torch.cat([A.to(torch.float64), b[rows, None].to(torch.float64)], dim=1)
        R = torch.linalg.qr(Ab if R is None else torch.cat([R, Ab]), mode="r").R
    return torch.linalg.solve_triangular(R[:k, :k], R[:k, k:], upper=True)[:, 0]
