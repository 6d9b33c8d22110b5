"""The modified MLP of Wang, Teng & Perdikaris (2021), used by physics-informed DeepONets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._mlp import activation_module, check_widths

__all__ = ["ModifiedMLP"]


class ModifiedMLP(nn.Module):
    """MLP with two input encoders gating every hidden layer.

    With encoders ``U = s(x W_u + b_u)`` and ``V = s(x W_v + b_v)`` and ``H_0 = x``, hidden
    layer ``l = 1..L`` computes ``Z_l = s(H_{l-1} W_l + b_l)`` and
    ``H_l = (1 - Z_l) * U + Z_l * V``; the output is ``H_L W_out + b_out`` (linear).

    Parameters
    ----------
    widths : sequence of int
        ``[d_in, h, h, ..., h, d_out]``; all hidden widths must be equal (the encoders have
        width ``h``).
    activation : str or nn.Module
        ``"tanh"`` by default.

    References
    ----------
    Wang, Teng & Perdikaris, "Understanding and mitigating gradient flow pathologies in
    physics-informed neural networks", SIAM J. Sci. Comput. 43 (2021).
    Wang, Wang & Perdikaris, "Learning the solution operator of parametric partial
    differential equations with physics-informed DeepONets", Science Advances 7 (2021).

    Examples
    --------
    >>> import torch
    >>> net = ModifiedMLP([2, 32, 32, 32, 1])
    >>> net(torch.randn(5, 2)).shape
    torch.Size([5, 1])
    """

    def __init__(self, widths: Sequence[int], activation="tanh") -> None:
        super().__init__()
        widths = check_widths(widths, "widths")
        if len(widths) < 3:
            raise ValueError(f"widths: expected at least one hidden layer, got {widths!r}")
        hidden = widths[1:-1]
        if len(set(hidden)) != 1:
            raise ValueError(f"widths: expected equal hidden widths, got {widths!r}")
        h = hidden[0]
        self.encoder_u = nn.Linear(widths[0], h)
        self.encoder_v = nn.Linear(widths[0], h)
        self.hidden = nn.ModuleList(
            [nn.Linear(widths[0], h)] + [nn.Linear(h, h) for _ in range(len(hidden) - 1)]
        )
        self.out = nn.Linear(h, widths[-1])
        self.act = activation_module(activation)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.act
        u = s(self.encoder_u(x))
        v = s(self.encoder_v(x))
        h = x
        for layer in self.hidden:
            z = s(layer(h))
            h = u + z * (v - u)
        return self.out(h)
