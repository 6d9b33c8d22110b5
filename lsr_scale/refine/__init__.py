"""Refinement: one-shot subspace LSR and matrix-free Krylov LSR of trained networks."""

from ._model import RefinedModel
from ._refine import default_rank, refine, solve_reduced

__all__ = ["refine", "RefinedModel", "solve_reduced", "default_rank"]
