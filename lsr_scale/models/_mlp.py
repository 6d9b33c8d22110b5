"""A plain multilayer perceptron, and the layer helpers the other models build on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "activation_module", "check_widths", "mlp_layers"]


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sin": _Sin}


def activation_module(activation) -> nn.Module:
    """A fresh activation module by name (``"tanh"``, ``"relu"``, ``"gelu"``, ``"silu"``,
    ``"sin"``); an ``nn.Module`` is returned as it is."""
    if isinstance(activation, nn.Module):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {sorted(_ACTIVATIONS)} or an nn.Module, "
            f"got {activation!r}"
        )
    return _ACTIVATIONS[activation]()


def check_widths(widths, name: str = "widths") -> list[int]:
    """Layer widths as ints: at least two, all positive."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise ValueError(f"{name}: expected at least two positive widths, got {widths!r}")
    return widths


def mlp_layers(widths: Sequence[int], activation="tanh", last_activation: bool = False):
    """``nn.Sequential`` of Linear layers with ``activation`` between them.

    ``last_activation=True`` also applies the activation after the last layer (DeepONet
    branch and trunk nets do, following Lu et al. 2021 and Wang et al. 2021).
    """
    widths = check_widths(widths)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2 or last_activation:
            layers.append(activation_module(activation))
    return nn.Sequential(*layers)


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
        self.net = mlp_layers(widths, activation)
        self.widths = check_widths(widths)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
