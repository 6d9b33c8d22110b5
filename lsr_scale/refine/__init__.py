"""Refinement: one-shot subspace LSR, matrix-free Krylov LSR and Iterative LSR.

:func:`refine` linearizes once and hands the problem to a method object
(:class:`Subspace`, :class:`Krylov`); :class:`Products` says how Jacobian products are taken.

``lsr_scale.refine`` is this module and it is callable: ``ls.refine(model, data=...)`` calls
:func:`lsr_scale.refine.refine`, while ``import lsr_scale.refine as r`` gives the module with
its building blocks (``r.default_rank``, ``r.solve_reduced``, ...).
"""

import inspect as _inspect
import sys as _sys
import types as _types

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


class _CallableModule(_types.ModuleType):
    """The type of ``lsr_scale.refine``: calling the module calls :func:`refine`, so the
    package and the function share one name without one hiding the other."""

    def __call__(self, *args, **kwargs):
        return refine(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
__signature__ = _inspect.signature(refine)  # inspect.signature(ls.refine) names the arguments
