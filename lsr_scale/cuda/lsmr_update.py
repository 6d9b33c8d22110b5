"""Fused LSMR vector update: torch reference and CUDA launch (``lsmr_update.cu``)."""

from __future__ import annotations

import torch

from . import _loader, _registry

__all__ = ["lsmr_update_"]


def _lsmr_update_torch(x, h, hbar, v, a, b, c, sqnorm_x) -> None:
    """Reference: ``hbar = h + a*hbar; x += b*hbar; h = v + c*h`` in place (defines the bits)."""
    hbar.mul_(a).add_(h)
    x.add_(b * hbar)
    h.mul_(c).add_(v)
    if sqnorm_x is not None:
        xf = x.reshape(-1)
        sqnorm_x.copy_(torch.dot(xf, xf))


def _coef(a, dt, device):
    """``(device tensor or None, scalar value)`` for a kernel coefficient."""
    if isinstance(a, torch.Tensor) and a.device.type == "cuda":
        return a.detach().to(device=device, dtype=dt).reshape(()).contiguous(), 0.0
    return None, float(a)


def _lsmr_update_cuda(x, h, hbar, v, a, b, c, sqnorm_x) -> None:
    m = x.numel()
    dt = x.dtype
    dev = _loader.index_of(x)
    (pa, a0), (pb, b0), (pc, c0) = (_coef(q, dt, x.device) for q in (a, b, c))
    G = max(1, min(_loader.sm_count(dev) * 8, -(-m // 1024)))
    partial = torch.empty(G, dtype=dt, device=x.device) if sqnorm_x is not None else None
    i64 = _loader.i64
    if m:
        _loader.launch(
            _registry.entry("lsmr_update", dt),
            dev,
            (G,),
            (256,),
            (
                x,
                h,
                hbar,
                v,
                pa if pa is not None else 0,
                pb if pb is not None else 0,
                pc if pc is not None else 0,
                _loader.scalar(dt, a0),
                _loader.scalar(dt, b0),
                _loader.scalar(dt, c0),
                i64(m),
                partial if partial is not None else 0,
            ),
            raw=True,
        )
    if sqnorm_x is None:
        return
    if not m:
        sqnorm_x.zero_()
        return
    direct = sqnorm_x.dtype == dt and sqnorm_x.device == x.device
    res = sqnorm_x if direct else torch.empty((), dtype=dt, device=x.device)
    _loader.launch(
        _registry.entry("lsmr_sqnorm_finish", dt),
        dev,
        (1,),
        (256,),
        (partial, i64(G), res),
        raw=True,
    )
    if not direct:
        sqnorm_x.copy_(res)


def lsmr_update_(x, h, hbar, v, a, b, c, *, sqnorm_x: torch.Tensor | None = None) -> None:
    """Fused LSMR vector update, in place: ``hbar = h + a*hbar; x += b*hbar; h = v + c*h``.

    CUDA path (contiguous float32/float64 CUDA vectors): one kernel for the three updates (plus a
    one-block reduction for ``sqnorm_x``), bit-identical to the torch path for the vectors; the
    norm is reproducible run to run and equal to ``x @ x`` up to rounding.

    Parameters
    ----------
    x, h, hbar : torch.Tensor
        Vectors updated in place, all of one dtype, device and size.
    v : torch.Tensor
        Read only.
    a, b, c : float or torch.Tensor
        Numbers or 0-d tensors (kept on the device: no host sync).
    sqnorm_x : torch.Tensor, optional
        A 0-d tensor that receives ``||x||^2`` of the updated ``x``.

    Returns
    -------
    None
    """
    vecs = (x, h, hbar, v)
    dt = x.dtype
    if (
        dt in _registry.WORK_DTYPES
        and all(
            t.dtype == dt and t.is_contiguous() and t.device == x.device and t.numel() == x.numel()
            for t in vecs
        )
        and _registry.use_cuda("lsmr_update", *vecs)
    ):
        _lsmr_update_cuda(x, h, hbar, v, a, b, c, sqnorm_x)
        return None
    _lsmr_update_torch(x, h, hbar, v, a, b, c, sqnorm_x)
    return None
