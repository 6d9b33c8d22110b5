"""A plain multilayer perceptron."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "activation_module"]

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sin": None,
}


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def activation_module(name: str) -> nn.Module:
    """Return a fresh activation module by name ("tanh", "relu", "gelu", "silu", "sin")."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _Sin() if name == "sin" else _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Fully connected network ``widths[0] -> widths[1] -> ... -> widths[-1]``.

    Parameters
    ----------
    widths : sequence of int
        Layer widths including input and output, e.g. ``[2, 128, 128, 1]``.
    activation : str
        Hidden-layer activation; the last layer is linear.

    Examples
    --------
    >>> net = MLP([2, 32, 32, 32, 1])
    >>> sum(p.numel() for p in net.parameters())
    2241
    """

    def __init__(self, widths, activation: str = "tanh") -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w <= 0 for w in widths):
            raise ValueError(f"widths: expected >= 2 positive ints, got {widths}")
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(activation_module(activation))
        self.net = nn.Sequential(*layers)
        self.widths = widths
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
