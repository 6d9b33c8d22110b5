"""Krylov least-squares solvers in pure torch (scipy's names, stopping rule and istop codes),
with checkpoints, resumed solves and interrupts that keep the work done."""

from ._cg import cg
from ._lsmr import lsmr
from ._lsqr import lsqr
from ._result import SolverResult, StopReason
from ._state import SolverInterrupted, SolverState

__all__ = ["lsmr", "lsqr", "cg", "SolverResult", "StopReason", "SolverState", "SolverInterrupted"]
