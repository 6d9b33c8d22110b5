"""Workload 4: a PINN for the Poisson equation on the unit square.

``-Laplace u = f`` on ``[0, 1]^2`` with exact solution ``u = sin(pi (2x)^2) sin(pi y)`` and its
Dirichlet data. The paper's setting: MLP ``[2, 128x6, 1]``, tanh, 20,000 interior and 1,000
boundary collocation points. The residual is built from :func:`lsr_scale.pde.forward_laplacian`
(value, gradient and Laplacian pushed through the MLP together) and stacked with
:func:`lsr_scale.pde.stack_residuals`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from ..models import MLP
from ..pde import (
    forward_laplacian,
    laplacian,
    scalar_fn,
    stack_residuals,
    supports_forward_laplacian,
)
from ..refine._iterative import lbfgs_fit
from ._common import adam_loop, rel_l2

__all__ = ["PoissonProblem", "exact_solution", "source_term", "CPU_CONFIG"]


#: The scaled-down case the committed checkpoint and the CPU reproduction use (the paper's
#: case is the class default: 20,000 + 1,000 points, MLP [2, 128x6, 1]).
CPU_CONFIG = dict(n_interior=2000, n_boundary=400, widths=(2, 64, 64, 64, 64, 1))


def exact_solution(x: torch.Tensor) -> torch.Tensor:
    """``sin(pi (2x)^2) sin(pi y)`` at points ``(N, 2)``; returns ``(N,)``."""
    return torch.sin(4 * math.pi * x[:, 0] ** 2) * torch.sin(math.pi * x[:, 1])


def source_term(x: torch.Tensor) -> torch.Tensor:
    """``f = -Laplace u`` of :func:`exact_solution`, in closed form; returns ``(N,)``."""
    a, y = 4 * math.pi * x[:, 0] ** 2, x[:, 1]
    sy = torch.sin(math.pi * y)
    u_xx = (8 * math.pi * torch.cos(a) - 64 * math.pi**2 * x[:, 0] ** 2 * torch.sin(a)) * sy
    u_yy = -(math.pi**2) * torch.sin(a) * sy
    return -(u_xx + u_yy)


def _boundary(n: int, g: torch.Generator) -> torch.Tensor:
    t = torch.rand(n, generator=g, dtype=torch.float64)
    side = torch.arange(n) % 4
    x = torch.where(
        side == 0,
        t,
        torch.where(
            side == 1, torch.ones_like(t), torch.where(side == 2, 1 - t, torch.zeros_like(t))
        ),
    )
    y = torch.where(
        side == 0,
        torch.zeros_like(t),
        torch.where(side == 1, t, torch.where(side == 2, torch.ones_like(t), 1 - t)),
    )
    return torch.stack([x, y], 1)


@dataclass
class PoissonProblem:
    """Seeded collocation points, the PINN residual, training and evaluation.

    Parameters
    ----------
    n_interior, n_boundary : int
        Collocation points (paper: 20,000 and 1,000).
    widths : tuple of int
        MLP widths (paper: ``(2, 128, 128, 128, 128, 128, 128, 1)``).
    bc_weight : float
        Loss weight of the boundary block (the PDE block has weight 1); blocks are scaled by
        ``sqrt(lambda_i N_total / N_i)``.
    grid : int
        The test set is the ``grid x grid`` uniform grid on the closed square.
    """

    n_interior: int = 20000
    n_boundary: int = 1000
    widths: tuple = (2, 128, 128, 128, 128, 128, 128, 1)
    bc_weight: float = 100.0
    grid: int = 101
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    paper: dict = field(
        default_factory=lambda: {
            "network": "MLP [2, 128x6, 1]",
            "points": "20,000 interior + 1,000 boundary",
        }
    )

    def __post_init__(self) -> None:
        self.x_int, self.x_bc = self.sample_points(torch.Generator().manual_seed(self.seed))
        lin = torch.linspace(0, 1, self.grid, dtype=torch.float64)
        gx, gy = torch.meshgrid(lin, lin, indexing="ij")
        x_test = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        self.x_test = x_test.to(self.dtype).to(self.device)
        self.u_test = exact_solution(x_test).to(self.dtype).to(self.device)

    def sample_points(self, generator: torch.Generator):
        """Fresh uniform interior points and boundary points (``(N_i, 2)`` each)."""
        x_int = torch.rand(self.n_interior, 2, generator=generator, dtype=torch.float64)
        x_bc = _boundary(self.n_boundary, generator)
        return (x_int.to(self.dtype).to(self.device), x_bc.to(self.dtype).to(self.device))

    def make_model(self) -> MLP:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = MLP(list(self.widths), activation="tanh")
        return net.to(self.dtype).to(self.device)

    # ------------------------------------------------------------------ residuals
    def blocks(self, net, x_int=None, x_bc=None):
        """``{"pde": r_pde(params), "bc": r_bc(params)}`` as functions of the parameters."""
        x_int = self.x_int if x_int is None else x_int
        x_bc = self.x_bc if x_bc is None else x_bc
        f = source_term(x_int.double()).to(x_int.dtype)
        g = exact_solution(x_bc.double()).to(x_bc.dtype)
        fast = supports_forward_laplacian(net)

        def r_pde(p):
            if fast:
                lap = forward_laplacian(net, x_int, p)[2]
            else:
                lap = laplacian(scalar_fn(net, p), x_int)
            return -lap - f

        def r_bc(p):
            return functional_call(net, p, (x_bc,))[:, 0] - g

        return {"pde": r_pde, "bc": r_bc}

    def residual_fn(self, net, x_int=None, x_bc=None):
        """Stacked residual ``[r_pde ; sqrt(w) r_bc]`` (block-scaled) of ``net``'s parameters."""
        b = self.blocks(net, x_int, x_bc)
        return stack_residuals({"pde": (b["pde"], 1.0), "bc": (b["bc"], self.bc_weight)})

    def loss(self, net, x_int=None, x_bc=None) -> torch.Tensor:
        """``mean r_pde^2 + bc_weight mean r_bc^2`` (differentiable in ``net``'s parameters)."""
        b = self.blocks(net, x_int, x_bc)
        p = dict(net.named_parameters())
        return b["pde"](p).square().mean() + self.bc_weight * b["bc"](p).square().mean()

    # ------------------------------------------------------------------ training
    def train(
        self, net, *, epochs: int = 10000, lr: float = 1e-3, progress=None, resample_every: int = 0
    ) -> list[float]:
        """Full-batch Adam on :meth:`loss`, lr decaying 100x over the run."""
        g = torch.Generator().manual_seed(self.seed + 7)
        pts = [self.x_int, self.x_bc]

        def loss_at(ep):
            if resample_every and ep and ep % resample_every == 0:
                pts[:] = self.sample_points(g)
            return self.loss(net, *pts)

        return adam_loop(
            net,
            loss_at,
            epochs=epochs,
            lr=lr,
            gamma=0.01 ** (1 / max(epochs, 1)),
            progress=progress,
            desc="train Poisson PINN",
        )

    def train_lbfgs(
        self, net, *, time_budget: float, chunk: int = 50, resample: bool = True, generator=None
    ) -> list[dict]:
        """L-BFGS on :meth:`loss` (in place) for ``time_budget`` seconds, in chunks of
        ``chunk`` iterations, with fresh collocation points per chunk when ``resample``
        (a fresh L-BFGS state per chunk, as in the alignment step of Iterative LSR).
        Runs until the budget is reached or passed, so the baseline gets at least
        ``time_budget`` seconds. Returns the error curve ``[{"wall_s", "rel_l2",
        "iterations"}]`` (evaluation not timed)."""
        g = generator or torch.Generator().manual_seed(self.seed + 11)
        curve = [{"wall_s": 0.0, "rel_l2": self.test_error(net), "iterations": 0}]
        wall = 0.0
        x_int, x_bc = self.x_int, self.x_bc
        while wall < time_budget:
            t0 = time.perf_counter()
            if resample:
                x_int, x_bc = self.sample_points(g)
            lbfgs_fit(net, lambda xi=x_int, xb=x_bc: self.loss(net, xi, xb), max_iter=chunk)
            wall += time.perf_counter() - t0
            curve.append(
                {"wall_s": wall, "rel_l2": self.test_error(net), "iterations": len(curve) * chunk}
            )
        return curve

    def test_error(self, predict) -> float:
        """Relative L2 error of ``predict(x_test)`` on the test grid."""
        with torch.no_grad():
            pred = predict(self.x_test)
        return rel_l2(pred.reshape(-1), self.u_test.to(pred.dtype))
