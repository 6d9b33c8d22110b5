"""Krylov least-squares solvers in pure torch (scipy's names, stopping rule and istop codes)."""

from ._cg import cg
from ._lsmr import lsmr
from ._lsqr import lsqr
from ._result import SolverResult, StopReason

__all__ = ["lsmr", "lsqr", "cg", "SolverResult", "StopReason"]
