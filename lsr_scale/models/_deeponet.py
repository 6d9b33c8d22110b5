"""DeepONet: branch and trunk networks joined by a dot-product head (Lu et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._mlp import check_widths, mlp_layers

__all__ = ["DeepONet", "check_rows"]


def check_rows(u: torch.Tensor, y: torch.Tensor) -> None:
    """The aligned-rows convention of the operator networks' ``forward(u, y)``: 2-D ``u``
    ``(N, m_sensors)`` and ``y`` ``(N, d)``, ``u`` with ``N`` rows or one (broadcast)."""
    if u.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"u, y: expected 2-D tensors (N, m_sensors) and (N, d), got shapes "
            f"{tuple(u.shape)} and {tuple(y.shape)}"
        )
    if u.shape[0] not in (1, y.shape[0]):
        raise ValueError(
            f"u: expected {y.shape[0]} rows (aligned with y) or 1 (broadcast), got {u.shape[0]}"
        )


class DeepONet(nn.Module):
    """Unstacked DeepONet ``G(u)(y) = sum_k b_k(u) t_k(y) + b0``.

    Parameters
    ----------
    branch_widths : sequence of int
        Widths of the branch net, input first: ``[m_sensors, 128, 128, 128, 128]``.
    trunk_widths : sequence of int
        Widths of the trunk net, input first: ``[d, 128, 128, 128, 128]``. The last width of
        both nets is the latent dimension ``p`` and must agree.
    activation : str or nn.Module
        Activation of both nets (``"tanh"`` by default).
    arch : {"mlp", "modified"}
        ``"modified"`` uses :class:`ModifiedMLP` for branch and trunk, as physics-informed
        DeepONets do (Wang, Wang & Perdikaris 2021).
    trunk_last_activation : bool
        Apply the activation after the trunk's last layer too (default True).

    Notes
    -----
    **Row convention.** ``forward(u, y)`` takes *aligned* rows: ``u`` is ``(N, m_sensors)`` and
    ``y`` is ``(N, d)``; row ``i`` is the operator's value at point ``y[i]`` for input function
    ``u[i]``. The output is ``(N, 1)``, so ``JacobianOperator.from_module(net, (u, y), s)``
    with targets ``s`` of shape ``(N, 1)`` has one residual row per (function, point) pair,
    exactly as the supervised DeepONet loss does. ``u`` with a single row (``(1, m)``) is
    broadcast against all points of ``y``. :meth:`grid` evaluates the Cartesian product
    ``(B, P)`` without repeating the branch input, for evaluation.

    References
    ----------
    Lu, Jin, Pang, Zhang & Karniadakis, "Learning nonlinear operators via DeepONet", Nature
    Machine Intelligence 3 (2021).

    Examples
    --------
    >>> import torch
    >>> net = DeepONet([5, 16, 16], [1, 16, 16])
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
        arch: str = "mlp",
        trunk_last_activation: bool = True,
    ) -> None:
        super().__init__()
        branch_widths = check_widths(branch_widths, "branch_widths")
        trunk_widths = check_widths(trunk_widths, "trunk_widths")
        if branch_widths[-1] != trunk_widths[-1]:
            raise ValueError(
                "branch_widths/trunk_widths: expected the same latent width, got "
                f"{branch_widths[-1]} and {trunk_widths[-1]}"
            )
        if arch == "mlp":
            self.branch = mlp_layers(branch_widths, activation)
            self.trunk = mlp_layers(trunk_widths, activation, last_activation=trunk_last_activation)
        elif arch == "modified":
            from ._modified_mlp import ModifiedMLP

            self.branch = ModifiedMLP(branch_widths, activation)
            self.trunk = ModifiedMLP(trunk_widths, activation)
        else:
            raise ValueError(f"arch: expected 'mlp' or 'modified', got {arch!r}")
        self.bias = nn.Parameter(torch.zeros(()))
        self.branch_widths = branch_widths
        self.trunk_widths = trunk_widths
        self.arch = arch

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_rows(u, y)
        b = self.branch(u)
        t = self.trunk(y)
        return (b * t).sum(-1, keepdim=True) + self.bias

    def grid(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, m) x (P, d) -> (B, P)``: every input function at every point."""
        return self.branch(u) @ self.trunk(y).T + self.bias
