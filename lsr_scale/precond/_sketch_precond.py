"""Sketch-and-precondition (Blendenpik / LSRN): ``S A = Q R``, then LSMR on ``A R^-1``."""

from __future__ import annotations

import torch

from .._checks import (
    check_at_least,
    check_choice,
    check_generator,
    check_positive_int,
    check_tolerance,
)
from ..randomized._blocks import run_blocks
from ..sketch._sketches import SKETCHES
from ._common import Preconditioner, as_operator, identity_columns

__all__ = ["SketchPreconditioner", "sketch_operator"]


def _default_chunk(n_rows: int, m: int) -> int:
    # About 2^24 numbers (128 MiB in float64) per column chunk of A.
    return max(1, min(m, (1 << 24) // max(n_rows, 1)))


def sketch_operator(S, A, *, chunk=None, what="sketch_operator") -> torch.Tensor:
    """Return ``S @ A`` (``s x m``) for a sketch ``S`` and an operator ``A`` (``n x m``).

    ``A`` is applied to identity columns in chunks (``chunk`` columns, ``chunk`` products
    each). When ``A`` has ``matmat_blocks`` (a :class:`~lsr_scale.JacobianOperator`), each
    chunk ``A E`` reaches the sketch as row blocks through ``S.apply_blocks``, so it is never
    held whole (except by :class:`~lsr_scale.sketch.SRHTSketch`, which needs its padded
    ``n_pad x chunk`` buffer). Otherwise ``A.matmat`` materializes ``n x chunk`` per chunk.
    A chunk that runs out of memory is halved and retried (a ``RuntimeWarning`` names
    ``what``), and the smaller size is kept; :func:`sketch_and_chunk` also returns it.
    """
    return sketch_and_chunk(S, A, chunk=chunk, what=what)[0]


def sketch_and_chunk(S, A, *, chunk=None, what="sketch_operator"):
    """``(S @ A, chunk)`` as :func:`sketch_operator`, with the chunk size in effect at the end."""
    n, m = A.shape
    if S.shape[1] != n:
        raise ValueError(f"S: expected {n} columns to match A.shape[0], got shape {S.shape}")
    rows = getattr(S, "n_pad", n)
    chunk = _default_chunk(rows, m) if chunk is None else check_positive_int(chunk, "chunk")
    out = torch.empty((S.shape[0], m), dtype=A.dtype, device=A.device)
    blocks_fn = getattr(A, "matmat_blocks", None)

    def step(j0, j1):
        E = identity_columns(m, j0, j1, A.dtype, A.device)
        if blocks_fn is not None and hasattr(S, "apply_blocks"):
            out[:, j0:j1] = S.apply_blocks(blocks_fn(E))
        else:
            out[:, j0:j1] = S.matmat(A.matmat(E))

    chunk = run_blocks(m, chunk, step, what=what, setting="chunk", device=A.device)
    return out, chunk


def _columns(A, chunk):
    """``(A, chunk)``: ``A`` itself as a dense matrix, ``chunk`` columns per product (halved
    when out of memory)."""
    n, m = A.shape
    out = torch.empty((n, m), dtype=A.dtype, device=A.device)

    def step(j0, j1):
        out[:, j0:j1] = A.matmat(identity_columns(m, j0, j1, A.dtype, A.device))

    what = "SketchPreconditioner: A.matmat"
    return out, run_blocks(m, chunk, step, what=what, setting="chunk", device=A.device)


class SketchPreconditioner(Preconditioner):
    r"""Sketch-and-precondition right preconditioner ``M = R^{-1}`` for tall ``A`` (n x m, n >> m).

    A random embedding ``S`` (``s x n``, ``s >= m``) is applied to the columns of ``A``;
    ``S A = Q R`` (reduced QR) and ``A R^{-1}`` has singular values in
    ``[1 / (1 + eps), 1 / (1 - eps)]`` when ``S`` is an ``eps``-embedding of ``range(A)``, so
    LSMR on ``A M`` converges in a number of iterations independent of ``cond(A)`` (about
    ``log(1/tol) / log(sqrt(s/m))``).

    Parameters
    ----------
    A : LinearOperator (n x m) or anything :func:`lsr_scale.aslinearoperator` accepts.
    sketch_size : int, optional
        ``s``; default ``4 m``. Must be ``>= m``. When ``s >= n`` sketching saves nothing,
        and the preconditioner is built from the QR of ``A`` itself (``sketch_kind`` is then
        ``"identity"``; ``A R^{-1}`` is orthonormal).
    sketch : {"sparse_sign", "gaussian", "srht"}
        The embedding (see :mod:`lsr_scale.sketch`). Default ``"sparse_sign"``.
    generator : torch.Generator, optional
        Source of randomness; None: torch's global RNG.
    rank_tol : float, optional
        ``R`` counts as rank deficient when ``sigma_min(R) <= rank_tol * sigma_max(R)``.
        Default ``m * eps`` of ``A``'s dtype.
    truncate : bool
        What to do with a rank-deficient ``R``. ``False`` (default): raise ``ValueError``.
        ``True``: with ``R = W Sigma V^T``, use ``M = V_r Sigma_r^{-1} V_r^T`` on the ``r``
        numerically nonzero singular values (LSMR then returns the solution restricted to
        that ``r``-dimensional subspace, which is the minimum-norm one when the null space
        of ``S A`` equals that of ``A``).
    chunk : int, optional
        Columns of ``A`` per batched product while sketching (default: about ``2^24 / n``).
        A chunk that runs out of memory (``torch.OutOfMemoryError``) is halved and retried,
        with a ``RuntimeWarning``; the sketch is drawn before, so ``R`` does not change.
    **sketch_options
        Passed to the sketch (e.g. ``zeta`` for the sparse-sign sketch).

    Attributes
    ----------
    R : torch.Tensor
        The ``m x m`` triangular factor (``None`` after truncation).
    sketch_kind : str
        The sketch used (``"identity"`` when ``sketch_size >= n``).
    rank : int
        ``m``, or ``r`` after truncation.
    cond_R : float
        ``sigma_max(R) / sigma_min(R)`` (the condition number of ``S A``).
    chunk : int
        Columns per product at the end of the build (smaller than the one given after
        running out of memory).
    build_time, build_matvecs, build_rmatvecs
        The build costs ``m`` matvecs with ``A`` and no rmatvecs.

    Raises
    ------
    ValueError
        If ``m > n``, ``sketch_size < m``, or ``R`` is rank deficient and ``truncate=False``.

    Notes
    -----
    ``M`` is applied with triangular solves against ``R`` (``M x = R^{-1} x``,
    ``M^T y = R^{-T} y``), never with an explicit inverse. The build costs ``m`` products with
    ``A`` (in column chunks) and ``O(s m^2)`` for the QR, so it pays off for tall operators
    with moderate ``m`` (the reduced LSR matrix ``G0 P``, or a subset of parameters).

    References
    ----------
    .. [1] H. Avron, P. Maymounkov, S. Toledo, "Blendenpik: Supercharging LAPACK's
       least-squares solver", SIAM J. Sci. Comput. 32(3), 2010.
    .. [2] X. Meng, M. A. Saunders, M. W. Mahoney, "LSRN: A parallel iterative solver for
       strongly over- or underdetermined systems", SIAM J. Sci. Comput. 36(2), 2014.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(2000, 20, dtype=torch.float64, generator=g) @ torch.diag(
    ...     torch.logspace(0, -8, 20, dtype=torch.float64))
    >>> M = ls.precond.SketchPreconditioner(A, generator=g)
    >>> M.sketch_kind, M.sketch_size, M.build_matvecs
    ('sparse_sign', 80, 20)
    """

    name = "sketch"

    def __init__(
        self,
        A,
        sketch_size=None,
        sketch="sparse_sign",
        *,
        generator=None,
        rank_tol=None,
        truncate=False,
        chunk=None,
        **sketch_options,
    ) -> None:
        A = as_operator(A)
        n, m = A.shape
        check_choice(sketch, tuple(SKETCHES), "sketch")
        check_generator(generator)
        if m > n:
            raise ValueError(
                f"A: expected a tall operator (m <= n) for sketch-and-precondition, got shape "
                f"{A.shape}; use NystromPreconditioner or the sample-space solver instead"
            )
        s = 4 * m if sketch_size is None else check_positive_int(sketch_size, "sketch_size")
        if chunk is not None:
            chunk = check_positive_int(chunk, "chunk")
        check_at_least(s, m, "sketch_size", "m")
        super().__init__(m, A.dtype, A.device)
        eps = torch.finfo(A.dtype).eps
        rank_tol = m * eps if rank_tol is None else check_tolerance(rank_tol, "rank_tol")
        self.sketch_size = min(s, n)
        self.sketch_kind = sketch if s < n else "identity"
        with torch.no_grad(), self._recording(A):
            if self.sketch_kind == "identity":
                SA, self.chunk = _columns(A, _default_chunk(n, m) if chunk is None else chunk)
            else:
                S = SKETCHES[sketch](
                    n,
                    s,
                    generator=generator,
                    dtype=A.dtype,
                    device=A.device,
                    **sketch_options,
                )
                SA, self.chunk = sketch_and_chunk(
                    S, A, chunk=chunk, what="SketchPreconditioner: sketching A"
                )
            R = torch.linalg.qr(SA, mode="r").R
            svals = torch.linalg.svdvals(R)
        smax = float(svals[0]) if svals.numel() else 0.0
        smin = float(svals[-1]) if svals.numel() else 0.0
        self.cond_R = smax / smin if smin > 0 else float("inf")
        self.truncated = False
        self.rank = m
        if smax == 0 or smin <= rank_tol * smax:
            nr = int((svals > rank_tol * smax).sum()) if smax > 0 else 0
            if not truncate:
                raise ValueError(
                    f"A: expected full column rank for SketchPreconditioner, got a sketched "
                    f"factor R with cond {self.cond_R:.3g} (numerical rank {nr} of {m} at "
                    f"rank_tol={rank_tol:.3g}); pass truncate=True to precondition on the "
                    "numerical range, or use damp > 0 with NystromPreconditioner"
                )
            _, sv, Vh = torch.linalg.svd(R)
            self.V = Vh[:nr].T.contiguous()
            self.inv_s = 1.0 / sv[:nr]
            self.R = None
            self.truncated = True
            self.rank = nr
        else:
            self.R = R

    def _matmat(self, X):
        if self.truncated:
            return self.V @ (self.inv_s[:, None] * (self.V.T @ X))
        return torch.linalg.solve_triangular(self.R, X, upper=True)

    def _rmatmat(self, Y):
        if self.truncated:
            return self._matmat(Y)
        return torch.linalg.solve_triangular(self.R.T, Y, upper=False)

    def _matvec(self, x):
        return self._matmat(x[:, None])[:, 0]

    def _rmatvec(self, y):
        return self._rmatmat(y[:, None])[:, 0]

    def info(self) -> dict:
        out = super().info()
        out.update(
            sketch=self.sketch_kind,
            sketch_size=self.sketch_size,
            rank=self.rank,
            cond_R=self.cond_R,
            truncated=self.truncated,
        )
        return out
