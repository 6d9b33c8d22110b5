"""Workload 2: the data-driven Burgers operator u(x, 0) -> u(x, 1), learned by a DeepONet.

Viscous Burgers ``u_t + u u_x = nu u_xx`` on the periodic unit interval, ``nu = 0.1``,
initial conditions from ``N(0, 625 (-Laplace + 25 I)^-2)``, solved by the pseudo-spectral
integrating-factor RK4 solver :func:`solve_burgers` here (no downloaded data) and sampled at
128 grid points. The paper's setting: 1,000 training and 50 test functions, DeepONet with
branch ``[128, 128x4]`` and trunk ``[1, 128x4]``, tanh.

``BurgersProblem(dataset="viscid")`` is the harder data set the authors' Burgers runs load
(``viscid_train.mat``, described in public material as: ``nu = 0.1/pi`` on ``[-1, 1]`` with
zero Dirichlet values, initial conditions a sine series with coefficient standard deviations
``70.14 (49 + (k pi)^2)^-1.25``, output at ``t = 1`` on 128 points of ``linspace(-1, 1)``).
It is generated here by the same solver: an odd initial condition on the 2-periodic line
stays odd and vanishes at ``x = +-1`` (Burgers maps ``u(x)`` to ``-u(-x)``), so the periodic
solve on ``[-1, 1)`` *is* the Dirichlet solution. At this viscosity fronts form; with
``nu = 0.1`` on the unit interval every mode above the first decays by ``e^-16`` or more
by ``t = 1``, and the outputs are nearly a constant plus one sinusoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models._deeponet import DeepONet
from ._common import adam_loop, rel_l2
from ._grf import eval_fourier, interp_periodic, periodic_grf, sine_grf

__all__ = ["solve_burgers", "BurgersProblem", "DeepONetGrid"]

# Sine modes of the viscid data set's initial conditions: the last one's standard deviation
# is 3e-5 of the first's. Fixed, so the draws do not depend on the solver grid.
_VISCID_MODES = 255


def solve_burgers(
    u0: np.ndarray,
    *,
    nu: float = 0.1,
    t_final: float = 1.0,
    dt: float = 5e-4,
    nonlinear: bool = True,
    dealias: bool = True,
    length: float = 1.0,
) -> np.ndarray:
    """Solve ``u_t + u u_x = nu u_xx`` on a periodic interval of ``length``, pseudo-spectrally.

    Fourier collocation on the grid ``x_j = length j/n`` of ``u0`` (shape ``(B, n)`` or ``(n,)``),
    the 2/3 rule for the quadratic term ``-(u^2/2)_x``, and fourth-order Runge-Kutta on the
    integrating-factor form ``d/dt (e^{nu k^2 t} u_hat) = e^{nu k^2 t} N(u_hat)``: diffusion is
    integrated exactly, so ``dt`` is limited only by the advection CFL. ``nonlinear=False``
    solves the heat equation (exact up to round-off: used in the tests). Returns ``u(., t_final)``.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    squeeze = u0.ndim == 1
    u = np.atleast_2d(u0)
    n = u.shape[-1]
    k = 2 * math.pi / length * np.fft.rfftfreq(n, d=1.0 / n)
    lin = -nu * k**2
    mask = np.ones_like(k)
    if dealias:
        mask[np.abs(np.fft.rfftfreq(n, d=1.0 / n)) > n / 3] = 0.0
    n_steps = max(1, int(math.ceil(t_final / dt - 1e-12)))
    h = t_final / n_steps
    e_half = np.exp(lin * h / 2)
    e_full = e_half * e_half

    def rhs(v_hat):
        if not nonlinear:
            return np.zeros_like(v_hat)
        w = np.fft.irfft(v_hat * mask, n=n)
        return -0.5j * k * np.fft.rfft(w * w) * mask

    v = np.fft.rfft(u)
    for _ in range(n_steps):
        a = rhs(v)
        b = rhs(e_half * (v + 0.5 * h * a))
        c = rhs(e_half * v + 0.5 * h * b)
        d = rhs(e_full * v + h * e_half * c)
        v = e_full * v + (h / 6) * (e_full * a + 2 * e_half * (b + c) + d)
    out = np.fft.irfft(v, n=n)
    return out[0] if squeeze else out


class DeepONetGrid(torch.nn.Module):
    """A view of a :class:`DeepONet` whose forward is the Cartesian product ``net.grid``.

    ``DeepONetGrid(net)((u, y))`` with ``u`` ``(B, m)`` and ``y`` ``(P, 1)`` returns
    ``(B, P)``; its parameters *are* ``net``'s (prefixed ``net.``). Refining this view gives
    the same least-squares problem as the aligned rows ``(B P)`` of the DeepONet, but each
    JVP evaluates the branch net on ``B`` rows instead of ``B P``.
    """

    def __init__(self, net: DeepONet, y: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        # Optional fixed trunk grid: then forward(u) takes one input with one row per
        # function, as refine's validation scan expects.
        self.register_buffer("y", y)

    def forward(self, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.grid(u, self.y if y is None else y)


@dataclass
class BurgersProblem:
    """Seeded data, model and training for the Burgers DeepONet workload.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of initial conditions (paper: 1,000 and 50).
    n_grid : int
        Output/sensor grid (paper: 128). The solver runs on ``solver_grid`` points
        (``None``: 256 periodic, a multiple of ``n_grid``; 512 viscid) with time step
        ``dt`` and is subsampled (periodic) or interpolated spectrally (viscid).
    width, depth : int
        Hidden width and number of hidden layers of branch and trunk (paper: 128, 4).
    dataset : {"periodic", "viscid"}
        ``"periodic"`` (default): ``nu = 0.1`` on the periodic unit interval, sensors and
        outputs at ``j / n_grid``. ``"viscid"``: ``nu = 0.1/pi`` on ``[-1, 1]``, Dirichlet,
        sine-series inputs, sensors and outputs at ``linspace(-1, 1, n_grid)`` (see the
        module docstring). ``nu=None`` takes the data set's viscosity.
    """

    n_train: int = 1000
    n_test: int = 50
    n_grid: int = 128
    solver_grid: int | None = None
    dt: float = 5e-4
    nu: float | None = None
    width: int = 128
    depth: int = 4
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    dataset: str = "periodic"
    paper: dict = field(
        default_factory=lambda: {
            "trained": 1.08e-2,
            "subspace": 2.05e-3,
            "rank": 9000,
            "wall_s": 47.0,
            "peak_mem_bytes": 20.5e9,
        }
    )

    def __post_init__(self) -> None:
        if self.dataset not in ("periodic", "viscid"):
            raise ValueError(f"dataset: expected 'periodic' or 'viscid', got {self.dataset!r}")
        if self.nu is None:
            self.nu = 0.1 if self.dataset == "periodic" else 0.1 / math.pi
        if self.solver_grid is None:
            self.solver_grid = 256 if self.dataset == "periodic" else 512
        rng = np.random.default_rng(self.seed)
        n = self.n_train + self.n_test
        if self.dataset == "periodic":
            u0 = periodic_grf(n, self.solver_grid, rng=rng)
            u1 = solve_burgers(u0, nu=self.nu, dt=self.dt)
            u0 = interp_periodic(u0, self.n_grid)
            u1 = interp_periodic(u1, self.n_grid)
            y = np.arange(self.n_grid) / self.n_grid
        else:
            if self.solver_grid < 2 * _VISCID_MODES + 2:
                raise ValueError(
                    f"solver_grid: expected at least {2 * _VISCID_MODES + 2} for the viscid "
                    f"data set ({_VISCID_MODES} sine modes), got {self.solver_grid}"
                )
            y = np.linspace(-1.0, 1.0, self.n_grid)
            grid = -1.0 + 2.0 * np.arange(self.solver_grid) / self.solver_grid
            coef = sine_grf(n, _VISCID_MODES, rng=rng)
            ks = math.pi * np.arange(1, coef.shape[1] + 1)
            u0_grid = coef @ np.sin(np.outer(ks, grid))
            u1_grid = solve_burgers(u0_grid, nu=self.nu, dt=self.dt, length=2.0)
            u0 = coef @ np.sin(np.outer(ks, y))
            u1 = eval_fourier(u1_grid, y, length=2.0, x0=-1.0)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.y = t(y[:, None])
        self.u_train, self.s_train = t(u0[: self.n_train]), t(u1[: self.n_train])
        self.u_test, self.s_test = t(u0[self.n_train :]), t(u1[self.n_train :])

    def make_model(self) -> DeepONet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = DeepONet(
                [self.n_grid] + [self.width] * self.depth,
                [1] + [self.width] * self.depth,
                activation="tanh",
            )
        return net.to(self.dtype).to(self.device)

    @property
    def train_data(self):
        """``((u, y), s)``: the training functions, the trunk grid and the targets."""
        return (self.u_train, self.y), self.s_train

    def train(
        self,
        net: DeepONet,
        *,
        epochs: int = 5000,
        lr: float = 1e-3,
        batch: int = 1000,
        progress=None,
    ) -> list[float]:
        """Adam on the mean squared error over all (function, point) pairs, mini-batched
        over functions, learning rate decaying 100x over the run."""
        g = torch.Generator().manual_seed(self.seed + 1)

        def loss_at(ep):
            idx = torch.randperm(self.n_train, generator=g)[:batch]
            return torch.mean((net.grid(self.u_train[idx], self.y) - self.s_train[idx]) ** 2)

        return adam_loop(
            net,
            loss_at,
            epochs=epochs,
            lr=lr,
            gamma=0.01 ** (1 / max(epochs, 1)),
            progress=progress,
            desc="train Burgers DeepONet",
        )

    def test_error(self, predict) -> float:
        """Relative L2 error over the test set (all functions and points together)."""
        with torch.no_grad():
            pred = predict((self.u_test, self.y))
        return rel_l2(pred, self.s_test.to(pred.dtype))
