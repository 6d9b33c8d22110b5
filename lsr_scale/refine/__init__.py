"""Refinement: one-shot subspace LSR, matrix-free Krylov LSR and Iterative LSR.

:func:`refine` linearizes once and hands the problem to a method object
(:class:`Subspace`, :class:`Krylov`); :class:`Products` says how Jacobian products are taken.
"""

from ._iterative import IterativeResult, iterative_refine
from ._krylov import Krylov
from ._methods import Method, Problem, Products
from ._model import RefinedModel
from ._plan import Plan
from ._refine import as_method, plan, refine
from ._sample_space import solve_sample_space
from ._subspace import Subspace, default_rank, solve_reduced

__all__ = [
    "refine",
    "plan",
    "Plan",
    "Subspace",
    "Krylov",
    "Products",
    "Method",
    "Problem",
    "as_method",
    "RefinedModel",
    "iterative_refine",
    "IterativeResult",
    "solve_reduced",
    "solve_sample_space",
    "default_rank",
]
