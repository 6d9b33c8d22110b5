"""Elementwise activations with closed-form derivatives up to third order.

The forward Laplacian needs ``s(z)``, ``s'(z)`` and ``s''(z)`` of every activation ``s``; its
hand-written parameter JVP and VJP (:mod:`lsr_scale.pde._forward_laplacian`) also need
``s'''(z)``. Each entry of :data:`DERIVATIVES` maps an activation module type to a function
``derivs(z, k) -> [s(z), s'(z), ..., s^(k)(z)]`` (``k <= 3``) written with plain torch ops,
so it is itself differentiable (double backward stays exact).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models._mlp import _Sin

__all__ = ["DERIVATIVES", "activation_derivs"]


def _tanh(z, k):
    a = torch.tanh(z)
    s1 = 1 - a * a
    out = [a, s1]
    if k >= 2:
        out.append(-2 * a * s1)
    if k >= 3:
        out.append(-2 * s1 * (s1 - 2 * a * a))
    return out[: k + 1]


def _sin(z, k):
    s, c = torch.sin(z), torch.cos(z)
    return [s, c, -s, -c][: k + 1]


def _sigmoid_all(z, k):
    s = torch.sigmoid(z)
    d1 = s * (1 - s)
    out = [s, d1]
    if k >= 2:
        d2 = d1 * (1 - 2 * s)
        out.append(d2)
        if k >= 3:
            out.append(d2 * (1 - 2 * s) - 2 * d1 * d1)
    return out


def _sigmoid(z, k):
    return _sigmoid_all(z, k)[: k + 1]


def _silu(z, k):
    # (z s)^(j) = j s^(j-1) + z s^(j)
    s = _sigmoid_all(z, min(k, 3))
    out = [z * s[0]]
    for j in range(1, k + 1):
        out.append(j * s[j - 1] + z * s[j])
    return out


_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(z, k):
    cdf = 0.5 * (1 + torch.erf(z * _INV_SQRT2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT2PI
    zz = z * z
    return [z * cdf, cdf + z * pdf, pdf * (2 - zz), pdf * z * (zz - 4)][: k + 1]


#: Activation module type -> ``derivs(z, k)``. ``nn.GELU`` only with ``approximate="none"``.
DERIVATIVES = {nn.Tanh: _tanh, _Sin: _sin, nn.Sigmoid: _sigmoid, nn.SiLU: _silu, nn.GELU: _gelu}


def activation_derivs(module: nn.Module):
    """The ``derivs(z, k)`` function of an activation module, or None when unsupported."""
    fn = DERIVATIVES.get(type(module))
    if fn is _gelu and getattr(module, "approximate", "none") != "none":
        return None
    return fn
