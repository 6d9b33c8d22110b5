"""Forward Laplacian: value, input gradient and Laplacian pushed through an MLP together."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["forward_laplacian", "supports_forward_laplacian"]


def _tanh_derivs(z):
    a = torch.tanh(z)
    s1 = 1 - a * a
    return a, s1, -2 * a * s1


def _silu_derivs(z):
    s = torch.sigmoid(z)
    d1 = s * (1 + z * (1 - s))
    d2 = s * (1 - s) * (2 + z * (1 - 2 * s))
    return z * s, d1, d2


_ELEMENTWISE = {nn.Tanh: _tanh_derivs, nn.SiLU: _silu_derivs}


def _chain(model: nn.Module):
    """The (name, module) leaves of a feed-forward stack, or None when it is not one."""
    seq = model
    if not isinstance(seq, nn.Sequential):
        inner = [m for m in model.children()]
        if len(inner) == 1 and isinstance(inner[0], nn.Sequential):
            name = next(iter(dict(model.named_children())))
            return (
                [(f"{name}.{n}", m) for n, m in inner[0].named_children()]
                if _ok(inner[0])
                else None
            )
        return None
    return list(seq.named_children()) if _ok(seq) else None


def _ok(seq: nn.Sequential) -> bool:
    return all(isinstance(m, nn.Linear) or type(m) in _ELEMENTWISE for m in seq.children())


def supports_forward_laplacian(model: nn.Module) -> bool:
    """True when ``model`` is a Linear/Tanh/SiLU stack (``nn.Sequential`` or one wrapping it)."""
    return _chain(model) is not None


def forward_laplacian(model: nn.Module, x: torch.Tensor, params=None, output: int = 0):
    """``(u, grad_x u, laplacian u)`` of a feed-forward MLP at the points ``x``.

    Pushes the value ``h``, the input Jacobian ``dh/dx`` and the Laplacian ``sum_i
    d^2h/dx_i^2`` through the layers together: a Linear layer maps all three by ``W``; an
    elementwise activation ``s`` gives ``s(z)``, ``s'(z) dz/dx`` and
    ``s'(z) lap z + s''(z) |dz/dx|^2``. That costs about ``d + 2`` forward passes and no
    nested autodiff, so the parameter JVP and VJP of a PDE residual stay cheap. Everything is
    plain torch, so ``torch.func`` transforms in the parameters compose with it.

    Parameters
    ----------
    model : nn.Module
        ``nn.Sequential`` of ``nn.Linear`` and ``nn.Tanh`` / ``nn.SiLU`` layers, or a module
        whose only child is such a Sequential.
    x : Tensor ``(N, d)``
    params : dict or None
        Parameter tensors by name (as ``model.named_parameters()``); default: the module's.
    output : int
        Output component.

    Returns
    -------
    u : ``(N,)``, grad : ``(N, d)``, lap : ``(N,)``

    References
    ----------
    Li, Ye, Wang, Zheng, He, Hu, Wang, He & Wang, "A computational framework for neural
    network-based variational Monte Carlo with Forward Laplacian", Nature Machine
    Intelligence 6 (2024).
    """
    chain = _chain(model)
    if chain is None:
        raise TypeError(
            "model: expected an nn.Sequential of Linear and Tanh/SiLU layers (or a module "
            f"wrapping one), got {type(model).__name__}; use lsr_scale.pde.laplacian instead"
        )
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor of points (N, d), got {tuple(x.shape)}")
    if params is None:
        params = dict(model.named_parameters())
    n, d = x.shape
    h = x
    g = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, n, d)
    lap = torch.zeros_like(x)
    for name, m in chain:
        if isinstance(m, nn.Linear):
            w = params[f"{name}.weight"]
            b = params.get(f"{name}.bias") if m.bias is not None else None
            h = h @ w.T
            if b is not None:
                h = h + b
            g = g @ w.T
            lap = lap @ w.T
        else:
            a, s1, s2 = _ELEMENTWISE[type(m)](h)
            lap = s1 * lap + s2 * (g * g).sum(0)
            g = s1 * g
            h = a
    return h[:, output], g[:, :, output].T, lap[:, output]
