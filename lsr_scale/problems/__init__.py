"""Seeded, download-free workloads: data, baseline training and error evaluation.

1. :class:`FunctionProblem`: sin(pi x) sin(pi y) on [-1, 1]^2 (the demo's workload).
2. :class:`BurgersProblem`: data-driven viscous Burgers operator u(x, 0) -> u(x, 1), DeepONet
   (``dataset="periodic"``, nu=0.1, or ``"viscid"``, nu=0.1/pi on [-1, 1]).
3. :class:`AntiderivativeProblem`: physics-informed DeepONet for u' = s, u(0) = 0.
4. :class:`PoissonProblem`: -Laplace(u) = f on [0, 1]^2 with Dirichlet data, PINN.
"""

from ._antiderivative import AntiderivativeProblem
from ._burgers import BurgersProblem, DeepONetGrid, solve_burgers
from ._checkpoint import load_checkpoint, save_checkpoint
from ._common import rel_l2, train_adam
from ._function import FunctionProblem, target_function
from ._poisson import PoissonProblem

__all__ = [
    "FunctionProblem",
    "BurgersProblem",
    "AntiderivativeProblem",
    "PoissonProblem",
    "DeepONetGrid",
    "solve_burgers",
    "target_function",
    "rel_l2",
    "train_adam",
    "save_checkpoint",
    "load_checkpoint",
]
