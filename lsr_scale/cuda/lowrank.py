"""Low-rank (Nystrom) preconditioner application: torch references and CUDA launches.

The operator is ``U diag(d) U^T y + c (y - U U^T y) = U ((d - c) * (U^T y)) + c y`` with a basis
``U`` (m, l) stored in bfloat16, float16 or the working dtype. The CUDA path (``lowrank.cu``)
makes two passes over ``U`` (pass 1 ``U^T y`` with the ``d - c`` folding, pass 2 ``U w + c y``),
decoding 16-bit storage in registers and accumulating in the working dtype.
"""

from __future__ import annotations

import torch

from . import _loader, _registry

__all__ = ["lowrank_apply", "lowrank_project", "lowrank_expand"]

_LOWRANK_MAX_L = 4096
# Bytes of one upcast row chunk of a lower-precision basis. On the CPU a chunk that stays in
# cache is read from memory once: 4 MiB took 0.12 s for U^T y at m = 1e6, l = 310 (float32
# basis, float64 y, one thread), 256 MiB took 1.35 s, and a float64 basis 0.13 s. On a GPU
# (the torch fallback when the kernels are off) fewer, larger launches are faster.
_CHUNK_BYTES = {"cpu": 1 << 22, "cuda": 1 << 28}


def _chunk_bytes(t) -> int:
    return _CHUNK_BYTES.get(t.device.type, 1 << 28)


def _lowrank_torch(U, d, c, y, chunk_bytes=None):
    """Reference: ``U (d - c) U^T y + c y``; a 16-bit U is upcast in row chunks (bounded memory)."""
    w_of = (lambda z: (d - c) * z) if y.ndim == 1 else (lambda z: (d - c)[:, None] * z)
    if U.dtype == y.dtype:
        return U @ w_of(U.T @ y) + c * y
    m, l = U.shape
    chunk_bytes = _chunk_bytes(y) if chunk_bytes is None else chunk_bytes
    rows = max(1, chunk_bytes // max(1, l * y.element_size()))
    z = None
    for r0 in range(0, m, rows):
        Uc = U[r0 : r0 + rows].to(y.dtype)
        part = Uc.T @ y[r0 : r0 + rows]
        z = part if z is None else z + part
    if z is None:
        z = y.new_zeros((l,) + tuple(y.shape[1:]))
    w = w_of(z)
    out = torch.empty_like(y)
    for r0 in range(0, m, rows):
        Uc = U[r0 : r0 + rows].to(y.dtype)
        out[r0 : r0 + rows] = Uc @ w + c * y[r0 : r0 + rows]
    return out


def _upcast_rows(U, dtype, chunk_bytes=None):
    """Yield ``(rows, U[rows].to(dtype))`` in row chunks (bounded extra memory)."""
    m, l = U.shape
    chunk_bytes = _chunk_bytes(U) if chunk_bytes is None else chunk_bytes
    step = max(1, chunk_bytes // max(1, l * torch.finfo(dtype).bits // 8))
    for r0 in range(0, m, step):
        yield slice(r0, r0 + step), U[r0 : r0 + step].to(dtype)


def _passes_ok(U, y) -> bool:
    """Whether the two CUDA passes apply to this basis and vector."""
    return (
        y.dtype in _registry.WORK_DTYPES
        and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))
        and (U.dtype in _registry.LOWRANK_STORES or U.dtype == y.dtype)
        and U.is_contiguous()
        and 0 < U.shape[1] <= _LOWRANK_MAX_L
        and U.shape[0] > 0
        and _registry.use_cuda("lowrank", U, y)
    )


def _basis_layout(U, dt):
    """``(paired, U as the kernel reads it, load units per row)`` for a basis in working dtype dt.

    A 16-bit basis with an even number of columns on a 4-byte boundary is read two elements per
    32-bit load (the ``x2`` entry points).
    """
    paired = U.dtype != dt and U.shape[1] % 2 == 0 and U.data_ptr() % 4 == 0
    if paired:
        return True, U.view(torch.int32), U.shape[1] // 2
    return False, U, U.shape[1]


def _c_args(c, dt):
    """``(device tensor or None, scalar)``: ``c`` read on the device when it is a CUDA tensor."""
    if isinstance(c, torch.Tensor) and c.device.type == "cuda":
        return c.to(dt).reshape(()).contiguous(), _loader.scalar(dt, 0)
    return None, _loader.scalar(dt, float(c))


def _pass1_cuda(U, yv, dv, c):
    """Pass 1 over U: ``w = (d - c) * (U^T y)`` (d = 1, c = 0 gives ``U^T y`` exactly)."""
    m, l = U.shape
    dt = yv.dtype
    dev = _loader.index_of(yv)
    paired, Uk, lu = _basis_layout(U, dt)
    cptr, cval = _c_args(c, dt)
    threads = min(1024, max(32, -(-lu // 32) * 32))
    G = max(1, min(_loader.sm_count(dev) * 16, -(-m // 64)))
    rpb = -(-m // G)
    G = -(-m // rpb)
    partial = torch.empty((G, l), dtype=dt, device=yv.device)
    i64 = _loader.i64
    _loader.launch(
        _registry.entry("lowrank_zt", dt, store=U.dtype, paired=paired),
        dev,
        (G,),
        (threads,),
        (Uk, yv, partial, i64(m), i64(lu), i64(rpb)),
    )
    w = torch.empty(l, dtype=dt, device=yv.device)
    _loader.launch(
        _registry.entry("lowrank_reduce", dt),
        dev,
        (-(-l // 128),),
        (128,),
        (partial, i64(G), i64(l), dv, cptr if cptr is not None else 0, cval, w),
    )
    return w


def _pass2_cuda(U, yv, w, c, res):
    """Pass 2 over U: ``res = U w + c y``."""
    m, l = U.shape
    dt = yv.dtype
    dev = _loader.index_of(yv)
    paired, Uk, lu = _basis_layout(U, dt)
    cptr, cval = _c_args(c, dt)
    grid = max(1, min(_loader.sm_count(dev) * 8, -(-m // 8)))
    i64 = _loader.i64
    _loader.launch(
        _registry.entry("lowrank_apply", dt, store=U.dtype, paired=paired),
        dev,
        (grid,),
        (256,),
        (Uk, yv, w.contiguous(), cptr if cptr is not None else 0, cval, res, i64(m), i64(lu)),
        shared_mem=l * yv.element_size(),
    )
    return res


def lowrank_project(U: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return ``U.T @ y`` for a basis ``U`` stored in y's dtype, bfloat16 or float16.

    The first of the two passes of :func:`lowrank_apply`, for preconditioners that put their
    own (l x l) core between the passes. Accumulates in ``y``'s dtype; CUDA path as in
    :func:`lowrank_apply`.

    Parameters
    ----------
    U : torch.Tensor
        Shape (m, l).
    y : torch.Tensor
        Shape (m,) or (m, k).

    Returns
    -------
    torch.Tensor
        Shape (l,) or (l, k), in ``y``'s dtype.
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0]:
        raise ValueError(
            f"lowrank_project: expected U (m, l) and y (m,) or (m, k); got U {tuple(U.shape)}, "
            f"y {tuple(y.shape)}"
        )
    if _passes_ok(U, y):
        yv = y.reshape(-1).contiguous()
        ones = torch.ones(U.shape[1], dtype=y.dtype, device=y.device)
        w = _pass1_cuda(U, yv, ones, 0.0)
        return w if y.ndim == 1 else w[:, None]
    if U.dtype == y.dtype:
        return U.T @ y
    z = y.new_zeros((U.shape[1],) + tuple(y.shape[1:]))
    for rows, Uc in _upcast_rows(U, y.dtype):
        z += Uc.T @ y[rows]
    return z


def lowrank_expand(
    U: torch.Tensor, w: torch.Tensor, c, y: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Return ``U @ w + c * y`` for a basis ``U`` stored in y's dtype, bfloat16 or float16.

    The second pass of :func:`lowrank_apply`.

    Parameters
    ----------
    U : torch.Tensor
        Shape (m, l).
    w : torch.Tensor
        Shape (l,) or (l, k).
    c : float or torch.Tensor
        A number or a 0-d tensor.
    y : torch.Tensor
        Shape (m,) or (m, k).
    out : torch.Tensor, optional
        Shaped like ``y``; receives the result.

    Returns
    -------
    torch.Tensor
        Shaped like ``y`` (``out`` when given).
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0] or w.shape[0] != U.shape[1]:
        raise ValueError(
            f"lowrank_expand: expected U (m, l), w (l,) and y (m,); got U {tuple(U.shape)}, "
            f"w {tuple(w.shape)}, y {tuple(y.shape)}"
        )
    if _passes_ok(U, y) and w.ndim == 1:
        yv = y.reshape(-1).contiguous()
        res = _pass2_cuda(U, yv, w.to(y.dtype), c, _loader.buffer(out, (U.shape[0],), yv))
        return _loader.finish(res.reshape(y.shape), out)
    if U.dtype == y.dtype:
        return _loader.finish(U @ w + c * y, out)
    res = torch.empty_like(y)
    for rows, Uc in _upcast_rows(U, y.dtype):
        res[rows] = Uc @ w + c * y[rows]
    return _loader.finish(res, out)


def lowrank_apply(
    U: torch.Tensor, d: torch.Tensor, c, y: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Return ``U (d * (U.T y)) + c (y - U U.T y)`` for an orthonormal basis ``U``.

    Arithmetic happens in ``y``'s dtype (fp32 accumulation for fp32 ``y``). CUDA path for ``y``
    of shape (m,) or (m, 1), float32/float64, l <= 4096: two fused passes over U, reproducible
    run to run. Wider ``y`` uses torch matmul (a GEMM is the right tool there).

    Parameters
    ----------
    U : torch.Tensor
        Shape (m, l), stored in bfloat16, float16 or the dtype of ``y``.
    d : torch.Tensor
        Shape (l,).
    c : float or torch.Tensor
        A number or a 0-d tensor (read on the device: no host sync).
    y : torch.Tensor
        Shape (m,) or (m, k).
    out : torch.Tensor, optional
        Shaped like ``y``; receives the result.

    Returns
    -------
    torch.Tensor
        Shaped like ``y`` (``out`` when given).
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0] or d.shape != (U.shape[1],):
        raise ValueError(
            f"lowrank_apply: expected U (m, l), d (l,), y (m,) or (m, k); got U "
            f"{tuple(U.shape)}, d {tuple(d.shape)}, y {tuple(y.shape)}"
        )
    if _passes_ok(U, y):
        yv = y.reshape(-1).contiguous()
        dv = d.to(device=y.device, dtype=y.dtype).contiguous()
        w = _pass1_cuda(U, yv, dv, c)
        res = _pass2_cuda(U, yv, w, c, _loader.buffer(out, (U.shape[0],), yv))
        return _loader.finish(res.reshape(y.shape), out)
    return _loader.finish(_lowrank_torch(U, d, c, y), out)
