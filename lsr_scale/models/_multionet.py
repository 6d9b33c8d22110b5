"""MultiONet: a DeepONet whose output sums branch-trunk products over several hidden layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._deeponet import check_rows
from ._mlp import activation_module, check_widths

__all__ = ["MultiONet"]


class MultiONet(nn.Module):
    """Multi-output operator network ``G(u)(y) = (1/L) sum_l w_l <b_l(u), t_l(y)> + b0``.

    Branch and trunk are plain MLPs with the activation after every layer. Where a DeepONet
    joins them only at the last layer, a MultiONet takes the dot product of the branch and
    trunk features at each of the last ``L = sum_layers`` layers, weights each with a
    trainable scalar ``w_l`` and averages them, plus a trainable bias ``b0``. The layout
    follows Cao & Zhang's operator-learning examples (``MultiONetCartesianProd``): the
    ``w_l`` and ``b0`` start at zero, so the network starts at the zero function and the
    first Adam steps move the mixing weights.

    Parameters
    ----------
    branch_widths : sequence of int
        Widths of the branch net, input first: ``[m_sensors, 128, 128, 128, 128, 128]``.
    trunk_widths : sequence of int
        Widths of the trunk net, input first: ``[d, 128, 128, 128, 128, 128]``. Both nets
        need the same number of layers, and the last ``sum_layers`` widths must agree.
    activation : str or nn.Module
        Activation of both nets (``"tanh"`` by default).
    sum_layers : int
        How many of the last layers contribute a product (4 by default). The first layer
        (from the input) never does, so ``1 <= sum_layers <= len(branch_widths) - 2``.

    Notes
    -----
    Rows follow :class:`DeepONet`: ``forward(u, y)`` takes aligned rows ``(N, m)`` and
    ``(N, d)`` and returns ``(N, 1)`` (``u`` with one row is broadcast); :meth:`grid`
    evaluates the Cartesian product ``(B, P)``, so ``DeepONetGrid`` views work unchanged.

    Examples
    --------
    >>> import torch
    >>> net = MultiONet([5, 16, 16, 16], [1, 16, 16, 16], sum_layers=2)
    >>> net(torch.randn(7, 5), torch.rand(7, 1)).shape
    torch.Size([7, 1])
    >>> net.grid(torch.randn(3, 5), torch.rand(11, 1)).shape
    torch.Size([3, 11])
    """

    def __init__(
        self,
        branch_widths: Sequence[int],
        trunk_widths: Sequence[int],
        activation="tanh",
        *,
        sum_layers: int = 4,
    ) -> None:
        super().__init__()
        branch_widths = check_widths(branch_widths, "branch_widths")
        trunk_widths = check_widths(trunk_widths, "trunk_widths")
        if len(branch_widths) != len(trunk_widths):
            raise ValueError(
                "branch_widths/trunk_widths: expected the same number of layers, got "
                f"{len(branch_widths) - 1} and {len(trunk_widths) - 1}"
            )
        n_layers = len(branch_widths) - 1
        if not isinstance(sum_layers, int) or not 1 <= sum_layers <= n_layers - 1:
            raise ValueError(
                f"sum_layers: expected an int in [1, {n_layers - 1}] for {n_layers} layers "
                f"(the first layer is never summed), got {sum_layers!r}"
            )
        for j in range(n_layers - sum_layers, n_layers):
            if branch_widths[j + 1] != trunk_widths[j + 1]:
                raise ValueError(
                    f"branch_widths/trunk_widths: layer {j + 1} is summed, so its widths must "
                    f"agree, got {branch_widths[j + 1]} and {trunk_widths[j + 1]}"
                )
        self.branch = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(branch_widths[:-1], branch_widths[1:])
        )
        self.trunk = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(trunk_widths[:-1], trunk_widths[1:])
        )
        self.act = activation_module(activation)
        self.weights = nn.Parameter(torch.zeros(sum_layers))
        self.bias = nn.Parameter(torch.zeros(()))
        self.branch_widths = branch_widths
        self.trunk_widths = trunk_widths
        self.sum_layers = sum_layers

    def _features(self, layers: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of the last ``sum_layers`` layers."""
        out = []
        first = len(layers) - self.sum_layers
        for j, layer in enumerate(layers):
            x = self.act(layer(x))
            if j >= first:
                out.append(x)
        return out

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_rows(u, y)
        b = self._features(self.branch, u)
        t = self._features(self.trunk, y)
        out = sum(w * (bl * tl).sum(-1, keepdim=True) for w, bl, tl in zip(self.weights, b, t))
        return out / self.sum_layers + self.bias

    def grid(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, m) x (P, d) -> (B, P)``: every input function at every point."""
        b = self._features(self.branch, u)
        t = self._features(self.trunk, y)
        out = sum(w * (bl @ tl.T) for w, bl, tl in zip(self.weights, b, t))
        return out / self.sum_layers + self.bias
