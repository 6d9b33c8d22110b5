"""The models the benchmark suites time, built the same way everywhere (seeded).

``make(kind, size, rows)`` returns ``(model, inputs, targets)`` for ``kind`` in ``mlp``,
``deeponet``, ``fourier`` (a small Fourier-layer operator network of our own, FNO-style) and
``transformer`` (one ``torch.nn.TransformerEncoderLayer``); ``size`` is the width knob.
"""

from __future__ import annotations

import torch

KINDS = ("mlp", "deeponet", "fourier", "transformer")


def mlp_widths(m_target: int, depth: int = 4, d_in: int = 2) -> tuple[int, ...]:
    """Widths ``(d_in, w x depth, 1)`` of an MLP with about ``m_target`` parameters."""
    a, b = depth - 1, depth + 1 + d_in  # m ~ (depth-1) w^2 + (depth + 1 + d_in) w
    w = int((-b + (b * b + 4 * a * m_target) ** 0.5) / (2 * a))
    return (d_in, *[max(w, 2)] * depth, 1)


class Transformer(torch.nn.Module):
    """Linear embedding, one ``TransformerEncoderLayer`` (4 heads, feed-forward 2d), mean over
    the sequence, linear head. Runs the math attention kernel: the fused ones have no
    forward-mode derivative."""

    def __init__(self, d: int, d_in: int = 4):
        super().__init__()
        torch.backends.mha.set_fastpath_enabled(False)
        self.embed = torch.nn.Linear(d_in, d)
        self.layer = torch.nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=2 * d, dropout=0.0, batch_first=True
        )
        self.head = torch.nn.Linear(d, 1)

    def forward(self, x):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.head(self.layer(self.embed(x)).mean(dim=1))


class Fourier(torch.nn.Module):
    """A small FNO-style network on a 1-D grid: lift, ``layers`` Fourier layers (a learned
    complex multiplier on the lowest ``modes`` frequencies plus a pointwise linear map, GELU),
    project, mean over the grid. Real parameters only (the complex weights are stored as
    real and imaginary parts)."""

    def __init__(self, width: int, modes: int = 8, layers: int = 2):
        super().__init__()
        self.modes = modes
        self.lift = torch.nn.Linear(2, width)
        scale = 1.0 / width
        self.w_re = torch.nn.ParameterList(
            torch.nn.Parameter(scale * torch.randn(width, width, modes)) for _ in range(layers)
        )
        self.w_im = torch.nn.ParameterList(
            torch.nn.Parameter(scale * torch.randn(width, width, modes)) for _ in range(layers)
        )
        self.point = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))
        self.proj = torch.nn.Linear(width, 1)

    def forward(self, u):  # u: (batch, grid)
        grid = torch.linspace(0, 1, u.shape[-1], dtype=u.dtype, device=u.device)
        h = self.lift(torch.stack([u, grid.expand_as(u)], dim=-1))  # (b, g, w)
        for w_re, w_im, point in zip(self.w_re, self.w_im, self.point, strict=True):
            spec = torch.fft.rfft(h, dim=1)[:, : self.modes]  # (b, modes, w)
            mixed = torch.einsum("bki,iok->bko", spec, torch.complex(w_re, w_im))
            full = torch.zeros(
                h.shape[0], h.shape[1] // 2 + 1, h.shape[2], dtype=spec.dtype, device=h.device
            )
            full = torch.cat([mixed, full[:, self.modes :]], dim=1)
            h = torch.nn.functional.gelu(torch.fft.irfft(full, n=h.shape[1], dim=1) + point(h))
        return self.proj(h).mean(dim=1)


def make(kind: str, size: int, rows: int, device="cpu", dtype=torch.float32):
    """``(model, inputs, targets)``: seeded model of width ``size``, ``rows`` random rows."""
    from ..models import DeepONet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Linear(2, size),
            torch.nn.Tanh(),
            torch.nn.Linear(size, size),
            torch.nn.Tanh(),
            torch.nn.Linear(size, 1),
        )
        inputs = (torch.rand(rows, 2, generator=g) * 2 - 1,)
    elif kind == "deeponet":
        model = DeepONet([100, size, size, 64], [2, size, size, 64])
        inputs = (torch.randn(rows, 100, generator=g), torch.rand(rows, 2, generator=g))
    elif kind == "fourier":
        model = Fourier(size)
        inputs = (torch.randn(rows, 32, generator=g),)
    elif kind == "transformer":
        model = Transformer(size)
        inputs = (torch.randn(rows, 8, 4, generator=g),)
    else:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    model = model.to(device=device, dtype=dtype).eval()
    inputs = tuple(x.to(device=device, dtype=dtype) for x in inputs)
    targets = torch.randn(rows, 1, generator=g).to(device=device, dtype=dtype)
    return model, inputs, targets


def operator(kind: str, size: int, rows: int, device="cpu", dtype=torch.float32, **kw):
    """``(J, v, u, model, inputs)``: the Jacobian operator of :func:`make`'s problem and seeded
    random vectors for a JVP (``v``) and a VJP (``u``)."""
    import lsr_scale as ls

    model, inputs, targets = make(kind, size, rows, device, dtype)
    J = ls.JacobianOperator.from_module(model, inputs, targets, **kw)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(J.shape[1], generator=g, dtype=dtype).to(device)
    u = torch.randn(J.shape[0], generator=g, dtype=dtype).to(device)
    return J, v, u, model, inputs
