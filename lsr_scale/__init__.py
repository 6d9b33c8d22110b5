"""lsr_scale: matrix-free Linearized Subspace Refinement of trained neural networks.

A trained network q(theta, x) with residual f(theta) is linearized at theta0 and the
least-squares problem min ||G0 delta + f0|| is solved through Jacobian-vector products only
(Cao & Zhang, arXiv 2601.13989, made matrix-free). See ``docs/`` for the user guide.
"""

from . import cuda, distributed, losses, models, pde, precond, problems, refine, sketch, testing
from .cuda import show_config
from .operators import JacobianOperator, LinearOperator, aslinearoperator
from .randomized import randomized_range_finder, randomized_svd
from .refine import (
    IterativeResult,
    Krylov,
    Plan,
    Products,
    RefinedModel,
    Subspace,
    iterative_refine,
    plan,
)
from .solvers import SolverResult, StopReason, lsmr, lsqr

__version__ = "0.2.0"

__all__ = [
    "LinearOperator",
    "aslinearoperator",
    "JacobianOperator",
    "lsmr",
    "lsqr",
    "SolverResult",
    "StopReason",
    "randomized_range_finder",
    "randomized_svd",
    "refine",
    "plan",
    "Plan",
    "Subspace",
    "Krylov",
    "Products",
    "RefinedModel",
    "iterative_refine",
    "IterativeResult",
    "show_config",
    "cuda",
    "distributed",
    "sketch",
    "precond",
    "losses",
    "testing",
    "models",
    "pde",
    "problems",
    "__version__",
]
