"""Random embeddings R^n -> R^s: Gaussian, SRHT and sparse-sign sketches.

All three are :class:`~lsr_scale.LinearOperator` subclasses of shape ``(s, n)`` scaled so that
``E[S^T S] = I``, and all three can be applied to a matrix given as row blocks
(:meth:`apply_blocks`), which is how a :class:`~lsr_scale.JacobianOperator` hands out
``J[rows] @ V`` without ever holding ``J @ V`` whole.

The Walsh-Hadamard transform and the sparse-sign products go through
:mod:`lsr_scale.cuda` (looked up at call time), so a CUDA fast path registered there is
picked up without changes here.
"""

from __future__ import annotations

import math

import torch

from .. import cuda
from .._checks import (
    check_at_most,
    check_choice,
    check_float_dtype,
    check_positive_int,
    check_tensor,
)
from ..operators import LinearOperator
from ..randomized import resolve_generator

__all__ = ["GaussianSketch", "SRHTSketch", "SparseSignSketch", "make_sketch", "SKETCHES"]


class _Sketch(LinearOperator):
    """Common part of the sketches: sizes, validation and block application."""

    def __init__(self, n, sketch_size, dtype, device) -> None:
        n = check_positive_int(n, "n")
        s = check_positive_int(sketch_size, "sketch_size")
        dtype = torch.get_default_dtype() if dtype is None else check_float_dtype(dtype, "dtype")
        super().__init__((s, n), dtype, "cpu" if device is None else device)
        self.n = n
        self.sketch_size = s

    # Subclasses implement the two block hooks below.
    def _block_init(self, k: int, like: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def _block_add(self, state, rows, Xb: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def _block_finish(self, state) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_blocks(self, blocks) -> torch.Tensor:
        """Return ``S @ X`` for ``X`` given as an iterable of ``(row_slice, X[row_slice])`` pairs.

        Parameters
        ----------
        blocks : iterable of (slice or LongTensor, Tensor)
            Row blocks of an ``(n, k)`` matrix ``X``, each ``X_block`` of shape ``(len(rows), k)``
            with this sketch's dtype and device. This is exactly what
            ``JacobianOperator.matmat_blocks(V)`` yields. The blocks must cover the ``n`` rows
            (each once), in any order.

        Returns
        -------
        torch.Tensor
            ``(sketch_size, k)``.

        Raises
        ------
        TypeError
            If a block is not a tensor or has the wrong dtype.
        ValueError
            If there are no blocks, a block has the wrong shape or device, or the blocks do not
            add up to ``n`` rows.
        """
        state = None
        k = None
        covered = 0
        for rows, Xb in blocks:
            check_tensor(Xb, (None, None), self.dtype, self.device, "apply_blocks block")
            nrows = len(range(self.n)[rows]) if isinstance(rows, slice) else int(len(rows))
            if Xb.shape[0] != nrows:
                raise ValueError(
                    f"apply_blocks: expected a block of {nrows} rows for {rows!r}, "
                    f"got {tuple(Xb.shape)}"
                )
            if state is None:
                k = Xb.shape[1]
                state = self._block_init(k, Xb)
            elif Xb.shape[1] != k:
                raise ValueError(
                    f"apply_blocks: expected {k} columns in every block, got {Xb.shape[1]}"
                )
            covered += nrows
            state = self._block_add(state, rows, Xb)
        if state is None:
            raise ValueError(
                "apply_blocks: expected at least one (row_slice, block) pair, got none"
            )
        if covered != self.n:
            raise ValueError(f"apply_blocks: expected blocks covering {self.n} rows, got {covered}")
        self.num_matvecs += k
        return self._block_finish(state)

    def _matvec(self, x):
        return self._matmat(x[:, None])[:, 0]

    def _rmatvec(self, y):
        return self._rmatmat(y[:, None])[:, 0]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} n={self.n} sketch_size={self.sketch_size} "
            f"dtype={self.dtype} device={self.device}>"
        )


class GaussianSketch(_Sketch):
    """Dense Gaussian embedding ``S = G / sqrt(s)`` with i.i.d. standard normal ``G`` (s x n).

    Parameters
    ----------
    n : int
        Input dimension (rows of the matrices it sketches).
    sketch_size : int
        Output dimension ``s``.
    generator : torch.Generator, optional
        Source of randomness (draws on its device, then moved to ``device``); None: torch's
        global RNG (:func:`lsr_scale.randomized.resolve_generator`).
    dtype : torch.dtype, optional
        Default: ``torch.get_default_dtype()``.
    device : torch.device or str, optional
        Default: CPU.

    Notes
    -----
    ``S`` is stored: ``s * n`` numbers. Applying it costs ``O(s n k)`` for ``k`` columns;
    :meth:`apply_blocks` streams (memory ``O(s k)`` beyond ``S``). ``E[S^T S] = I``.

    References
    ----------
    N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness", SIAM
    Review 53 (2011).

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.sketch import GaussianSketch
    >>> S = GaussianSketch(100, 20, generator=torch.Generator().manual_seed(0),
    ...                    dtype=torch.float64)
    >>> S.shape
    (20, 100)
    """

    kind = "gaussian"

    def __init__(self, n, sketch_size, *, generator=None, dtype=None, device=None) -> None:
        super().__init__(n, sketch_size, dtype, device)
        gen = resolve_generator(generator)
        G = torch.randn(
            self.sketch_size, self.n, generator=gen, device=gen.device, dtype=torch.float64
        )
        self.matrix = (G / math.sqrt(self.sketch_size)).to(dtype=self.dtype, device=self.device)

    def _matmat(self, X):
        return self.matrix @ X

    def _rmatmat(self, Y):
        return self.matrix.T @ Y

    def _block_init(self, k, like):
        return like.new_zeros((self.sketch_size, k))

    def _block_add(self, out, rows, Xb):
        return out.addmm_(self.matrix[:, rows], Xb)

    def _block_finish(self, out):
        return out

    def to_dense(self) -> torch.Tensor:
        return self.matrix.clone()


class SRHTSketch(_Sketch):
    """Subsampled randomized Hadamard transform ``S = sqrt(1/s) P H D`` (s x n).

    ``D`` flips signs at random, ``H`` is the unnormalized Walsh-Hadamard transform of the
    input zero-padded to ``n_pad`` (the next power of two), and ``P`` keeps ``s`` of the
    ``n_pad`` rows uniformly at random, without replacement. With that scaling
    ``E[S^T S] = I``.

    Parameters
    ----------
    n, sketch_size, generator, dtype, device
        As for :class:`GaussianSketch`; ``sketch_size <= n_pad``.

    Notes
    -----
    One application costs ``O(n_pad k log n_pad)``. :meth:`apply_blocks` cannot stream: the
    transform mixes all rows, so it accumulates the blocks into an ``(n_pad, k)`` buffer
    (``n_pad * k`` numbers) before transforming. Use :class:`SparseSignSketch` or
    :class:`GaussianSketch` when that buffer does not fit. The transform is
    ``lsr_scale.cuda.fwht_`` (CUDA path when available).

    References
    ----------
    H. Avron, P. Maymounkov, S. Toledo, "Blendenpik: Supercharging LAPACK's least-squares
    solver", SIAM J. Sci. Comput. 32 (2010).
    N. Halko, P.-G. Martinsson, J. A. Tropp, SIAM Review 53 (2011), section 4.6.
    """

    kind = "srht"

    def __init__(self, n, sketch_size, *, generator=None, dtype=None, device=None) -> None:
        super().__init__(n, sketch_size, dtype, device)
        self.n_pad = 1 << max(0, (self.n - 1).bit_length())
        check_at_most(self.sketch_size, self.n_pad, "sketch_size", "n_pad (SRHT)")
        gen = resolve_generator(generator)
        bits = torch.randint(0, 2, (self.n,), generator=gen, device=gen.device)
        self.signs = (2.0 * bits - 1.0).to(dtype=self.dtype, device=self.device)
        perm = torch.randperm(self.n_pad, generator=gen, device=gen.device)
        self.rows = perm[: self.sketch_size].sort().values.to(self.device)
        self.scale = 1.0 / math.sqrt(self.sketch_size)

    def _transform_rows(self, buf):
        cuda.fwht_(buf)
        return buf[self.rows].mul_(self.scale)

    def _matmat(self, X):
        buf = X.new_zeros((self.n_pad, X.shape[1]))
        buf[: self.n] = self.signs[:, None] * X
        return self._transform_rows(buf)

    def _rmatmat(self, Y):
        buf = Y.new_zeros((self.n_pad, Y.shape[1]))
        buf[self.rows] = Y
        cuda.fwht_(buf)
        return buf[: self.n].mul_(self.signs[:, None]).mul_(self.scale)

    def _block_init(self, k, like):
        return like.new_zeros((self.n_pad, k))

    def _block_add(self, buf, rows, Xb):
        buf[rows] = self.signs[rows, None] * Xb
        return buf

    def _block_finish(self, buf):
        return self._transform_rows(buf)


def _distinct_rows(n: int, s: int, zeta: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, zeta)`` indices, each row a uniform random ``zeta``-subset of ``range(s)``.

    Floyd's algorithm, vectorized over the ``n`` rows: ``O(n zeta^2)`` time, ``O(n zeta)``
    memory (no ``n x s`` random keys).
    """
    out = torch.empty((n, zeta), dtype=torch.long, device=gen.device)
    for i, t in enumerate(range(s - zeta, s)):
        r = torch.randint(0, t + 1, (n,), generator=gen, device=gen.device)
        if i:
            clash = (out[:, :i] == r[:, None]).any(dim=1)
            r = torch.where(clash, torch.full_like(r, t), r)
        out[:, i] = r
    return out


class SparseSignSketch(_Sketch):
    """Sparse sign embedding: each column of ``S`` (s x n) has ``zeta`` nonzeros ``+-1/sqrt(zeta)``.

    The rows holding a column's nonzeros are a uniform random ``zeta``-subset of the ``s``
    rows, and the signs are independent fair coins, so every column has unit norm and
    ``E[S^T S] = I``.

    Parameters
    ----------
    n, sketch_size, generator, dtype, device
        As for :class:`GaussianSketch`.
    zeta : int, optional
        Nonzeros per column; default ``min(8, sketch_size)``.

    Notes
    -----
    ``S`` is stored as ``(n, zeta)`` indices and values. Applying it costs ``O(n zeta k)``;
    :meth:`apply_blocks` streams (memory ``O(s k)``). The products are
    ``lsr_scale.cuda.sparse_sign_apply`` / ``sparse_sign_apply_t``.

    References
    ----------
    X. Meng, M. W. Mahoney, "Low-distortion subspace embeddings in input-sparsity time and
    applications to robust linear regression", STOC (2013).
    J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Streaming low-rank matrix approximation
    with an application to scientific simulation", SIAM J. Sci. Comput. 41 (2019).
    """

    kind = "sparse_sign"

    def __init__(
        self, n, sketch_size, *, zeta=None, generator=None, dtype=None, device=None
    ) -> None:
        super().__init__(n, sketch_size, dtype, device)
        zeta = min(8, self.sketch_size) if zeta is None else check_positive_int(zeta, "zeta")
        check_at_most(zeta, self.sketch_size, "zeta", "sketch_size")
        self.zeta = zeta
        gen = resolve_generator(generator)
        self.indices = _distinct_rows(self.n, self.sketch_size, zeta, gen).to(self.device)
        bits = torch.randint(0, 2, (self.n, zeta), generator=gen, device=gen.device)
        vals = (2.0 * bits - 1.0) / math.sqrt(zeta)
        self.values = vals.to(dtype=self.dtype, device=self.device)

    def _matmat(self, X):
        return cuda.sparse_sign_apply(self.indices, self.values, X, self.sketch_size)

    def _rmatmat(self, Y):
        return cuda.sparse_sign_apply_t(self.indices, self.values, Y)

    def _block_init(self, k, like):
        return like.new_zeros((self.sketch_size, k))

    def _block_add(self, out, rows, Xb):
        return out.add_(
            cuda.sparse_sign_apply(self.indices[rows], self.values[rows], Xb, self.sketch_size)
        )

    def _block_finish(self, out):
        return out


SKETCHES = {
    "gaussian": GaussianSketch,
    "srht": SRHTSketch,
    "sparse_sign": SparseSignSketch,
}


def make_sketch(kind, n, sketch_size, *, generator=None, dtype=None, device=None, **options):
    """Build a sketch by name: ``"gaussian"``, ``"srht"`` or ``"sparse_sign"``.

    Extra keyword ``options`` go to the class (e.g. ``zeta`` for the sparse-sign sketch).
    """
    check_choice(kind, tuple(SKETCHES), "sketch")
    return SKETCHES[kind](
        n, sketch_size, generator=generator, dtype=dtype, device=device, **options
    )
