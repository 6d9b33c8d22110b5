"""Solver results: a frozen dataclass and scipy's istop codes as an IntEnum."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch

__all__ = ["StopReason", "SolverResult"]


class StopReason(IntEnum):
    """Why LSQR/LSMR stopped; the values are scipy's ``istop`` codes 0-7.

    The stopping rule (Paige-Saunders 1982, Fong-Saunders 2011), with r = b - A x and
    damp folded into A as [A; damp*I]:

    * 1: ``normr <= btol*normb + atol*norma*normx`` (x solves A x = b to the tolerances);
    * 2: ``normar <= atol*norma*normr`` (x solves the least-squares problem);
    * 3: ``conda >= conlim`` (A is too ill-conditioned for the tolerances);
    * 4-6: as 1-3 with ``atol = btol = eps`` and ``conlim = 1/eps`` (machine precision);
    * 7: ``maxiter`` reached; 0: b = 0 (after x0), x = x0 is exact.

    As in scipy, ``maxiter=0`` also returns 0 (no iteration ran); :class:`SolverResult` then
    reports ``converged`` False and says so in its ``message``.
    """

    ZERO_RHS = 0
    ATOL_BTOL = 1
    LEAST_SQUARES = 2
    CONLIM = 3
    ATOL_BTOL_EPS = 4
    LEAST_SQUARES_EPS = 5
    CONLIM_EPS = 6
    MAXITER = 7

    @property
    def message(self) -> str:
        return _MESSAGES[int(self)]

    @property
    def converged(self) -> bool:
        return self in (
            StopReason.ZERO_RHS,
            StopReason.ATOL_BTOL,
            StopReason.LEAST_SQUARES,
            StopReason.ATOL_BTOL_EPS,
            StopReason.LEAST_SQUARES_EPS,
        )


_MESSAGES = {
    0: "b - A x0 is zero: x = x0 is an exact solution.",
    1: "A x - b is small enough, given atol and btol.",
    2: "The least-squares solution is good enough, given atol.",
    3: "The estimate of cond(A) exceeded conlim: the system may be too ill-conditioned; "
    "try damp > 0, a preconditioner, or a larger conlim.",
    4: "A x - b is as small as machine precision allows.",
    5: "The least-squares solution is as good as machine precision allows.",
    6: "cond(A) seems to exceed 1/eps: try damp > 0 or a preconditioner.",
    7: "The iteration limit was reached before convergence: try increasing maxiter, "
    "loosening atol/btol, or using a preconditioner.",
}


@dataclass(frozen=True)
class SolverResult:
    """Result of :func:`lsr_scale.lsmr` / :func:`lsr_scale.lsqr` (and the other Krylov solvers).

    Attributes
    ----------
    x : torch.Tensor
        The solution (``x = M y`` when a right preconditioner ``M`` was given).
    istop : StopReason
        Why the iteration stopped (scipy's codes 0-7).
    itn : int
        Iterations performed.
    normr : float
        ``||b - A x||`` (with damp: ``sqrt(||b - A x||^2 + damp^2 ||x||^2)``), as estimated
        by the recurrences.
    normar : float
        ``||A^T r - damp^2 x||`` estimate.
    norma : float
        Frobenius-norm estimate of ``[A M; damp I]``.
    conda : float
        Condition-number estimate of the (preconditioned, damped) operator.
    normx : float
        ``||x||`` estimate (of ``y`` when preconditioned).
    num_matvecs, num_rmatvecs : int
        Products with the operator ``A`` made by the solver.
    history : dict
        ``{"normr": tensor(itn,), "normar": tensor(itn,)}`` per-iteration estimates, on the host.
    interrupted : bool
        True for the result a :class:`~lsr_scale.solvers.SolverInterrupted` carries (a
        KeyboardInterrupt stopped the solve): ``x`` is the latest iterate and ``istop`` keeps
        its meaning (7, not converged, unless a stopping test had fired before).
    """

    x: torch.Tensor
    istop: StopReason
    itn: int
    normr: float
    normar: float
    norma: float
    conda: float
    normx: float
    num_matvecs: int = 0
    num_rmatvecs: int = 0
    history: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def _no_iteration(self) -> bool:
        # maxiter=0 on a problem that was not solved at the start: scipy's istop 0 anyway.
        return self.itn == 0 and self.istop == StopReason.ZERO_RHS and self.normar > 0

    @property
    def converged(self) -> bool:
        """True unless the iteration hit ``maxiter`` (``maxiter=0`` included) or ``conlim``."""
        return StopReason(self.istop).converged and not self._no_iteration

    @property
    def message(self) -> str:
        if self._no_iteration:
            return "No iteration ran (maxiter=0): x = x0 (istop 0 as in scipy, not a solution)."
        return StopReason(self.istop).message
