"""Sparse-sign sketch products ``S @ X`` and ``S.T @ Y``: torch references and CUDA launches.

The CUDA kernels (``sparse_sign.cu``) gather instead of scattering: ``S @ X`` runs over a
CSR-by-row copy of S whose entries are in the order the CPU reference adds them, so GPU and CPU
results have the same bits, run after run.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from . import _loader, _registry

__all__ = ["SparseSignCSR", "sparse_sign_csr", "sparse_sign_apply", "sparse_sign_apply_t"]

_CSR_CACHE_SIZE = 8


class SparseSignCSR(NamedTuple):
    """Row-major (CSR) copy of a sparse-sign sketch S (s x n), entries of a row in (t, j) order.

    Attributes
    ----------
    s, n : int
        Shape of S.
    rowptr : torch.Tensor
        (s + 1,) int64 row offsets.
    col : torch.Tensor
        (nnz,) column indices, int32 (int64 when n >= 2**31).
    val : torch.Tensor
        (nnz,) values.
    max_per_row : int
        The largest number of entries in a row.
    """

    s: int
    n: int
    rowptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    max_per_row: int


def sparse_sign_csr(
    indices: torch.Tensor, values: torch.Tensor, s: int, dtype: torch.dtype | None = None
) -> SparseSignCSR:
    """Build the CSR-by-row form of S once (a stable sort: deterministic). Syncs the device once.

    The entries of row ``r`` are ordered by (t, j), the order in which the CPU reference adds
    them, so the CUDA gather kernel reproduces the CPU result bit for bit.

    Parameters
    ----------
    indices, values : torch.Tensor
        Shape (n, zeta): column ``j`` of S has ``values[j, t]`` at row ``indices[j, t]``.
    s : int
        Number of rows of S.
    dtype : torch.dtype, optional
        dtype of the stored values (default ``values.dtype``).

    Returns
    -------
    SparseSignCSR
    """
    n, zeta = indices.shape
    dtype = dtype or values.dtype
    flat = indices.t().reshape(-1)
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if int(lo) < 0 or int(hi) >= s:
            raise ValueError(
                f"sparse_sign: expected indices in [0, {s}), got [{int(lo)}, {int(hi)}]"
            )
    order = torch.sort(flat, stable=True).indices
    cols = torch.arange(n, device=indices.device).repeat(zeta)[order]
    col = cols.to(torch.int32) if n < 2**31 else cols
    val = values.t().reshape(-1).to(dtype)[order].contiguous()
    counts = torch.bincount(flat, minlength=s)
    rowptr = torch.zeros(s + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    maxc = int(counts.max()) if s and flat.numel() else 0
    return SparseSignCSR(s, n, rowptr, col.contiguous(), val, maxc)


def _cached_csr(indices, values, s, dtype) -> SparseSignCSR:
    """:func:`sparse_sign_csr`, cached per (indices, values) pair while neither is modified."""
    key = (id(indices), id(values), s, dtype)
    hit = _loader.CACHE.lru_get("csr", key)
    if hit is not None:
        wi, wv, vi, vv, csr = hit
        if wi() is indices and wv() is values and vi == indices._version and vv == values._version:
            return csr
    csr = sparse_sign_csr(indices, values, s, dtype)
    value = (weakref.ref(indices), weakref.ref(values), indices._version, values._version, csr)
    _loader.CACHE.lru_put("csr", key, value, _CSR_CACHE_SIZE)
    return csr


def _check_sketch(indices, values, what):
    if indices.ndim != 2 or values.shape != indices.shape:
        raise ValueError(
            f"{what}: expected indices and values of the same shape (n, zeta), got "
            f"{tuple(indices.shape)} and {tuple(values.shape)}"
        )


def _sparse_sign_torch_cpu(indices, values, X, s):
    """Reference: index_add_ over t then j (sequential on the CPU: deterministic)."""
    out = X.new_zeros((s, X.shape[1]))
    for t in range(indices.shape[1]):
        out.index_add_(0, indices[:, t], values[:, t, None] * X)
    return out


def _sparse_sign_torch_padded(csr: SparseSignCSR, X, chunk_bytes=1 << 28):
    """Deterministic torch formulation for devices where index_add_ uses atomics.

    Row r's products are scattered (no collisions) into a zero-padded (s, max_per_row, kc) block
    and reduced with ``sum(dim=1)``: the same bits on every run, but a different summation order
    from the CPU reference (agreement to rounding, not bit for bit). Columns are chunked so the
    padded block stays below ``chunk_bytes``.
    """
    s, k = csr.s, X.shape[1]
    out = X.new_zeros((s, k))
    nnz = csr.col.numel()
    if nnz == 0 or k == 0:
        return out
    counts = csr.rowptr[1:] - csr.rowptr[:-1]
    row = torch.repeat_interleave(torch.arange(s, device=X.device), counts)
    rank = torch.arange(nnz, device=X.device) - csr.rowptr[:-1][row]
    col = csr.col.long()
    M = max(csr.max_per_row, 1)
    kc = max(1, min(k, chunk_bytes // max(1, s * M * X.element_size())))
    for c0 in range(0, k, kc):
        c1 = min(k, c0 + kc)
        P = X.new_zeros((s, M, c1 - c0))
        P[row, rank] = csr.val[:, None] * X[col, c0:c1]
        out[:, c0:c1] = P.sum(dim=1)
    return out


def _sparse_sign_t_torch(indices, v, Y2):
    """Reference for ``S.T @ Y``: a gather summed in t order (deterministic everywhere)."""
    n, zeta = indices.shape
    if zeta == 0:
        return Y2.new_zeros((n, Y2.shape[1]))
    res = v[:, 0, None] * Y2[indices[:, 0]]
    for t in range(1, zeta):
        res = res + v[:, t, None] * Y2[indices[:, t]]
    return res


def _lanes(k: int) -> int:
    lpr = 1
    while lpr < 32 and lpr < k:
        lpr *= 2
    return lpr


def _grid(rows: int, k: int) -> tuple[tuple[int, int], int]:
    """Launch grid (row blocks, column blocks) of 256 threads, and lanes per row."""
    lpr = _lanes(k)
    rows_per_block = 256 // lpr
    return (-(-rows // rows_per_block), -(-k // (lpr * 4))), lpr


def sparse_sign_apply(
    indices: torch.Tensor,
    values: torch.Tensor,
    X: torch.Tensor,
    s: int,
    *,
    csr: SparseSignCSR | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``S @ X`` for the sparse-sign sketch S (s x n).

    Deterministic on every path: on the CPU, ``index_add_`` adds sequentially (t, then j); on a
    GPU the CUDA kernel sums each output row's entries in that same order with separately
    rounded products (bit-identical to the CPU result), and the CUDA torch fallback uses a
    collision-free padded gather reduced with ``sum`` (reproducible, equal up to rounding).

    Parameters
    ----------
    indices, values : torch.Tensor
        Shape (n, zeta): column ``j`` of S has nonzeros ``values[j, t]`` at rows
        ``indices[j, t]`` (repeated rows add up). ``values`` are used in ``X``'s dtype.
    X : torch.Tensor
        Shape (n, k), or (n,) (then the result is (s,)).
    s : int
        Number of rows of S.
    csr : SparseSignCSR, optional
        From :func:`sparse_sign_csr`: skips the per-call CSR lookup. Otherwise the CSR form is
        cached per (indices, values) pair.
    out : torch.Tensor, optional
        Shape (s, k) or (s,); receives the result.

    Returns
    -------
    torch.Tensor
        ``S @ X`` (``out`` when given).
    """
    _check_sketch(indices, values, "sparse_sign_apply")
    vec = X.ndim == 1
    X2 = X[:, None] if vec else X
    if X2.ndim != 2 or X2.shape[0] != indices.shape[0]:
        raise ValueError(
            f"sparse_sign_apply: expected X of shape ({indices.shape[0]}, k), got {tuple(X.shape)}"
        )
    if X2.device.type == "cuda":
        if csr is None and indices.device != X2.device:  # uncached: keep the sketch on X's device
            indices, values = indices.to(X2.device), values.to(X2.device)
        if csr is None:
            csr = _cached_csr(indices, values, s, X2.dtype)
        k = X2.shape[1]
        if (
            X2.dtype in _registry.WORK_DTYPES
            and csr.col.dtype == torch.int32
            and csr.val.dtype == X2.dtype
            and csr.rowptr.device == X2.device
            and _registry.use_cuda("sparse_sign", X2)
        ):
            Xc = X2.contiguous()
            res = _loader.buffer(out, (s, k), X2)
            if s and k:
                grid, lpr = _grid(s, k)
                i64 = _loader.i64
                _loader.launch(
                    _registry.entry("sparse_sign", X2.dtype),
                    _loader.index_of(X2),
                    grid,
                    (256,),
                    (csr.rowptr, csr.col, csr.val, Xc, res, i64(s), i64(k), i64(lpr)),
                )
        else:
            res = _sparse_sign_torch_padded(csr, X2)
        return _loader.finish(res[:, 0] if vec else res, out)
    res = _sparse_sign_torch_cpu(indices, values.to(X2.dtype), X2, s)
    return _loader.finish(res[:, 0] if vec else res, out)


def sparse_sign_apply_t(
    indices: torch.Tensor, values: torch.Tensor, Y: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Return ``S.T @ Y`` for the sparse-sign sketch S.

    ``result[j] = sum_t values[j, t] * Y[indices[j, t]]``, summed in t order (a gather: no
    collisions, deterministic everywhere). The CUDA kernel is bit-identical to the torch path.

    Parameters
    ----------
    indices, values : torch.Tensor
        Shape (n, zeta), as in :func:`sparse_sign_apply`.
    Y : torch.Tensor
        Shape (s, k) or (s,).
    out : torch.Tensor, optional
        Shape (n, k) or (n,); receives the result.

    Returns
    -------
    torch.Tensor
        ``S.T @ Y`` (``out`` when given).
    """
    _check_sketch(indices, values, "sparse_sign_apply_t")
    vec = Y.ndim == 1
    Y2 = Y[:, None] if vec else Y
    n, zeta = indices.shape
    v = values.to(Y2.dtype)
    if Y2.dtype in _registry.WORK_DTYPES and _registry.use_cuda(
        "sparse_sign_t", Y2, indices, values
    ):
        k = Y2.shape[1]
        res = _loader.buffer(out, (n, k), Y2)
        if n and k:
            grid, lpr = _grid(n, k)
            i64 = _loader.i64
            _loader.launch(
                _registry.entry("sparse_sign_t", Y2.dtype),
                _loader.index_of(Y2),
                grid,
                (256,),
                (
                    indices.to(torch.int64).contiguous(),
                    v.contiguous(),
                    Y2.contiguous(),
                    res,
                    i64(n),
                    i64(zeta),
                    i64(k),
                    i64(lpr),
                ),
            )
        return _loader.finish(res[:, 0] if vec else res, out)
    res = _sparse_sign_t_torch(indices, v, Y2)
    return _loader.finish(res[:, 0] if vec else res, out)
