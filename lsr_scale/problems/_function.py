"""Workload 1: function approximation of sin(pi x) sin(pi y) on [-1, 1]^2.

The paper's setting is an MLP [2, 128x6, 1] with tanh on 8,000 training points; the demo
uses a smaller net ([2, 32x3, 1], 2,241 parameters) on 2,000 points so it runs on a CPU in
seconds. Both are available through ``FunctionProblem``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..models import MLP
from ._common import rel_l2, train_adam

__all__ = ["FunctionProblem", "target_function"]


def target_function(x: torch.Tensor) -> torch.Tensor:
    """``sin(pi x) sin(pi y)`` for points ``x`` of shape (N, 2); returns (N, 1)."""
    return (torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:2])).to(x.dtype)


@dataclass
class FunctionProblem:
    """Seeded data, model and training for the function-approximation workload.

    Parameters
    ----------
    n_train : int
        Uniform random training points in [-1, 1]^2.
    grid : int
        The test set is a ``grid x grid`` uniform grid (used for error-field plots).
    widths : tuple of int
        MLP widths; ``(2, 128, 128, 128, 128, 128, 128, 1)`` is the paper's network.
    seed : int
        Seeds data and initialization (a local generator; the global RNG is untouched
        except by torch's own module initialization, which is wrapped in ``fork_rng``).
    """

    n_train: int = 2000
    grid: int = 64
    widths: tuple = (2, 32, 32, 32, 1)
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    paper: dict = field(
        default_factory=lambda: {
            "network": "MLP [2, 128x6, 1], tanh, 8,000 points",
            "note": "paper reports 10x-100x error reductions from one-shot LSR",
        }
    )

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.x_train = 2 * torch.rand(self.n_train, 2, generator=g, dtype=torch.float64) - 1
        lin = torch.linspace(-1, 1, self.grid, dtype=torch.float64)
        gx, gy = torch.meshgrid(lin, lin, indexing="ij")
        self.x_test = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        self.x_train = self.x_train.to(self.dtype).to(self.device)
        self.x_test = self.x_test.to(self.dtype).to(self.device)
        self.y_train = target_function(self.x_train)
        self.y_test = target_function(self.x_test)

    @property
    def n_params(self) -> int:
        w = self.widths
        return sum(w[i] * w[i + 1] + w[i + 1] for i in range(len(w) - 1))

    def make_model(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = MLP(self.widths, activation="tanh")
        return model.to(self.dtype).to(self.device)

    def train(self, model, *, epochs: int = 3000, lr: float = 3e-3, progress=None) -> list[float]:
        """Full-batch Adam on the mean squared error, lr decaying 100x over the run."""

        def loss_fn():
            return torch.mean((model(self.x_train) - self.y_train) ** 2)

        return train_adam(
            model, loss_fn, epochs=epochs, lr=lr, final_lr=lr / 100, progress=progress
        )

    def test_error(self, predict) -> float:
        """Relative L2 test error of ``predict(x_test)`` (a model or a refined predictor)."""
        with torch.no_grad():
            pred = predict(self.x_test)
        return rel_l2(pred, self.y_test.to(pred.dtype))
