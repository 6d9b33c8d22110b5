"""Refinement: one-shot subspace LSR, matrix-free Krylov LSR and Iterative LSR."""

from ._iterative import IterativeResult, iterative_refine
from ._model import RefinedModel
from ._refine import default_rank, refine, solve_reduced

__all__ = [
    "refine",
    "RefinedModel",
    "iterative_refine",
    "IterativeResult",
    "solve_reduced",
    "default_rank",
]
