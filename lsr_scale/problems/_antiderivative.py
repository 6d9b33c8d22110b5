"""Workload 3: a physics-informed DeepONet for the antiderivative operator.

``u'(x) = s(x)`` on ``[0, 1]`` with ``u(0) = 0``; ``s`` is drawn from a Gaussian process with
the RBF kernel, length scale 0.2, and the operator ``s -> u`` is learned from the physics
alone (no solution data): residual ``dG(s)/dy - s(y)`` and initial condition ``G(s)(0) = 0``
(Wang, Wang & Perdikaris 2021). Branch ``[100, 50x5]`` on 100 equispaced sensors, trunk
``[1, 50x5]``. LSR refines each test instance separately on that instance's physics
residual: 1 initial point + 1,000 random residual points, subspace from the output
Jacobian, rank 40 (the paper's setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from ..models._deeponet import DeepONet
from ..pde import directional_derivative, stack_residuals
from ._common import adam_loop
from ._grf import rbf_grf

__all__ = ["AntiderivativeProblem"]


def _interp(xf: torch.Tensor, sf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``sf`` (``(..., F)`` on the grid ``xf``) at ``y``."""
    n = xf.shape[0] - 1
    t = (y.clamp(0, 1) * n).reshape(-1)
    i = t.floor().long().clamp(max=n - 1)
    w = t - i.to(t.dtype)
    return sf[..., i] * (1 - w) + sf[..., i + 1] * w


@dataclass
class AntiderivativeProblem:
    """Seeded data, model, physics-informed training and per-instance residuals.

    Parameters
    ----------
    n_train, n_test : int
        Input functions for training and testing.
    n_sensors : int
        Branch input: ``s`` at equispaced sensors (paper: 100).
    n_fine : int
        ``s`` is sampled from the GP on this many equispaced points and is piecewise linear
        in between, so the exact antiderivative is the cumulative trapezoid rule.
    n_residual : int
        Residual points per instance for the per-instance LSR (paper: 1,000).
    """

    n_train: int = 1000
    n_test: int = 100
    n_sensors: int = 100
    n_fine: int = 991
    length_scale: float = 0.2
    width: int = 50
    depth: int = 5
    n_residual: int = 1000
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    paper: dict = field(
        default_factory=lambda: {
            "trained": 3.69e-3,
            "subspace": 1.53e-5,
            "rank": 40,
            "wall_s": 0.04,
        }
    )

    def __post_init__(self) -> None:
        if (self.n_fine - 1) % (self.n_sensors - 1):
            raise ValueError(
                f"n_fine: expected n_fine - 1 to be a multiple of n_sensors - 1, got {self.n_fine}"
            )
        rng = np.random.default_rng(self.seed)
        xf = np.linspace(0.0, 1.0, self.n_fine)
        s = rbf_grf(self.n_train + self.n_test, xf, length_scale=self.length_scale, rng=rng)
        h = xf[1] - xf[0]
        u = np.concatenate(
            [np.zeros((s.shape[0], 1)), np.cumsum(0.5 * h * (s[:, 1:] + s[:, :-1]), axis=1)], axis=1
        )
        step = (self.n_fine - 1) // (self.n_sensors - 1)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.x_fine = t(xf)
        self.s_fine = t(s)
        self.u_fine = t(u)
        self.sensors = t(xf[::step])
        self.branch_in = t(s[:, ::step])
        tr, te = slice(0, self.n_train), slice(self.n_train, None)
        self.s_train_fine, self.s_test_fine = self.s_fine[tr], self.s_fine[te]
        self.u_train_fine, self.u_test_fine = self.u_fine[tr], self.u_fine[te]
        self.b_train, self.b_test = self.branch_in[tr], self.branch_in[te]
        # evaluation points: every 10th fine point (the error is the mean relative L2 there)
        self.y_eval = self.x_fine[::10].reshape(-1, 1)

    def make_model(self) -> DeepONet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = DeepONet(
                [self.n_sensors] + [self.width] * self.depth,
                [1] + [self.width] * self.depth,
                activation="tanh",
            )
        return net.to(self.dtype).to(self.device)

    # ------------------------------------------------------------------ training
    def train(
        self,
        net: DeepONet,
        *,
        epochs: int = 20000,
        lr: float = 1e-3,
        batch: int = 500,
        n_points: int = 100,
        progress=None,
    ) -> list[float]:
        """Physics-informed Adam: ``mean (dG/dy - s)^2 + mean G(s)(0)^2`` over random
        residual points (shared by the functions of a batch), lr decaying 100x."""
        g = torch.Generator().manual_seed(self.seed + 1)
        zero = torch.zeros(1, 1, dtype=self.dtype, device=self.device)

        def loss_at(ep):
            idx = torch.randperm(self.n_train, generator=g)[:batch]
            y = torch.rand(n_points, 1, generator=g).to(self.dtype)
            b = net.branch(self.b_train[idx])
            t, dt = torch.func.jvp(net.trunk, (y,), (torch.ones_like(y),))
            res = b @ dt.T - _interp(self.x_fine, self.s_train_fine[idx], y)
            ic = b @ net.trunk(zero).T + net.bias
            return res.square().mean() + ic.square().mean()

        return adam_loop(
            net,
            loss_at,
            epochs=epochs,
            lr=lr,
            gamma=0.01 ** (1 / max(epochs, 1)),
            progress=progress,
            desc="train PI-DeepONet",
        )

    # ------------------------------------------------------------------ evaluation
    def instance_errors(self, predict, idx=None) -> torch.Tensor:
        """Relative L2 error per test instance of ``predict((branch_in (B, m), y (P, 1)))``
        returning ``(B, P)``, at the evaluation points."""
        idx = range(self.n_test) if idx is None else idx
        idx = torch.as_tensor(list(idx))
        with torch.no_grad():
            pred = predict((self.b_test[idx], self.y_eval))
        ref = self.u_test_fine[idx][:, ::10]
        return ((pred - ref).norm(dim=1) / ref.norm(dim=1)).double()

    def test_error(self, net: DeepONet) -> float:
        """Mean relative L2 error of the network over the test instances."""
        return float(self.instance_errors(lambda inp: net.grid(*inp)).mean())

    # ------------------------------------------------------------------ per-instance LSR
    def instance_residual(self, net: DeepONet, i: int, *, generator=None):
        """The stacked physics residual of test instance ``i`` as ``residual_fn(params)``,
        plus ``(u_row, y_sub_pool)``: the branch input and the residual points (for an
        output-Jacobian subspace). 1 initial point + ``n_residual`` random points."""
        g = generator or torch.Generator().manual_seed(self.seed + 1000 + i)
        y = torch.rand(self.n_residual, 1, generator=g).to(self.dtype).to(self.device)
        s_y = _interp(self.x_fine, self.s_test_fine[i], y)
        u_row = self.b_test[i : i + 1]
        zero = torch.zeros(1, 1, dtype=self.dtype, device=self.device)

        def r_pde(p):
            _, du = directional_derivative(
                lambda yy: functional_call(net, p, (u_row, yy))[:, 0], y, torch.ones(1)
            )
            return du - s_y

        def r_ic(p):
            return functional_call(net, p, (u_row, zero))[:, 0]

        fn = stack_residuals({"ic": (r_ic, 1.0), "pde": (r_pde, 1.0)})
        return fn, u_row, y
