"""Matrix-free Krylov LSR: damped least squares on the Jacobian operator itself."""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import check_choice, check_nonnegative_int, check_tolerance
from .._utils import timed
from ..precond import Jacobi, Nystrom, Sketch, as_preconditioner
from ..precond._specs import Auto
from ..solvers import lsmr, lsqr
from ._methods import Method, Problem
from ._sample_space import solve_sample_space

__all__ = ["Krylov"]

_DEFAULTS = {"solver": "lsmr", "maxiter": 1000, "atol": 1e-8, "btol": 1e-8, "conlim": 1e12}
_SOLVERS = {"lsmr": lsmr, "lsqr": lsqr}


@dataclass(frozen=True)
class Krylov(Method):
    """Matrix-free LSR: ``min ||G0 delta + f0||^2 + damp^2 ||delta||^2`` by a Krylov solver.

    Parameter space runs LSMR (or LSQR) on ``G0`` with a right preconditioner; sample space
    (for ``n << m``) solves ``(G0 G0^T + damp^2 I) z = -f0`` by preconditioned CG and
    returns ``delta = G0^T z``. Early stopping (``maxiter``) and ``damp`` are the
    regularizers, as the rank is for :class:`Subspace`.

    Parameters
    ----------
    solver : {"lsmr", "lsqr"}, optional
        The parameter-space solver (default ``"lsmr"``). Sample space always runs CG.
    preconditioner : str, specification or None
        ``"auto"`` (default: :class:`lsr_scale.precond.Auto`, sketch-and-precondition for
        tall operators, Nystrom otherwise), ``"nystrom"``, ``"sketch"``, ``"jacobi"``, a
        specification such as ``ls.precond.Nystrom(rank=300)``, or ``None``. In sample space
        only Nystrom (or ``None``) applies; ``"auto"`` then means Nystrom.
    damp : float
        Tikhonov damping.
    maxiter : int, optional
        Iteration limit (default 1,000).
    atol, btol : float, optional
        scipy's LSMR/LSQR stopping tolerances (defaults 1e-8). In sample space ``atol`` is
        CG's relative tolerance ``||b - (G0 G0^T + damp^2) z|| <= atol ||b||`` and ``btol``
        does not apply.
    conlim : float, optional
        LSMR/LSQR condition-number limit (default 1e12); parameter space only.
    space : {"parameter", "sample", "auto"}
        ``"auto"`` picks sample space when ``2 n <= m``.

    Raises
    ------
    ValueError, TypeError
        At construction, on invalid values or settings that do not apply (``btol``,
        ``conlim`` or ``solver`` with a space that may be the sample space, or a sketch or
        Jacobi preconditioner there).
    """

    solver: str | None = None
    preconditioner: object = "auto"
    damp: float = 0.0
    maxiter: int | None = None
    atol: float | None = None
    btol: float | None = None
    conlim: float | None = None
    space: str = "parameter"

    name = "krylov"

    def __post_init__(self):
        if self.solver is not None:
            check_choice(self.solver, tuple(_SOLVERS), "Krylov.solver")
        object.__setattr__(
            self, "preconditioner", as_preconditioner(self.preconditioner, "Krylov.preconditioner")
        )
        check_tolerance(self.damp, "Krylov.damp")
        if self.maxiter is not None:
            check_nonnegative_int(self.maxiter, "Krylov.maxiter")
        for k in ("atol", "btol"):
            if getattr(self, k) is not None:
                check_tolerance(getattr(self, k), f"Krylov.{k}")
        if self.conlim is not None and not self.conlim > 0:
            raise ValueError(f"Krylov.conlim: expected a positive number, got {self.conlim!r}")
        check_choice(self.space, ("parameter", "sample", "auto"), "Krylov.space")
        if self.space != "parameter":
            for k in ("solver", "btol", "conlim"):
                if getattr(self, k) is not None:
                    raise ValueError(
                        f"Krylov.{k}: applies to space='parameter' only (sample space runs CG), "
                        f"got it with space={self.space!r}"
                    )
            pc = self.preconditioner
            if isinstance(pc, (Sketch, Jacobi)):
                raise ValueError(
                    "Krylov.preconditioner: sample space takes a Nystrom preconditioner or None, "
                    f"got {pc.name!r} with space={self.space!r}"
                )

    def setting(self, key: str):
        """A setting with its default filled in."""
        value = getattr(self, key)
        return _DEFAULTS[key] if value is None else value

    def resolved_space(self, shape) -> str:
        n, m = shape
        if self.space == "auto":
            return "sample" if 2 * n <= m else "parameter"
        return self.space

    def solve(self, problem: Problem):
        J, b = problem.J, problem.b
        device = J.device
        times: dict[str, float] = {}
        space = self.resolved_space(J.shape)
        spec = self.preconditioner
        if isinstance(spec, Auto):
            spec = spec.nystrom if space == "sample" else spec.choose(J.shape)
        info: dict = {"space": space, "rank": None}
        if space == "sample":
            rank = spec.resolved_rank(J.shape) if spec is not None else None
            problem.stage("sample-space CG")
            with timed(times, "solve", device):
                res = solve_sample_space(
                    J,
                    b,
                    damp=self.damp,
                    maxiter=self.setting("maxiter"),
                    tol=self.setting("atol"),
                    precond_rank=rank,
                    precond_method=spec.method if spec is not None else "svd",
                    generator=problem.generator,
                )
            info["preconditioner"] = {"name": spec.name if spec else None, "rank": rank}
        else:
            problem.stage(f"build {spec.name if spec else 'no'} preconditioner")
            with timed(times, "precond_build", device):
                M = None
                if spec is not None:
                    M = spec.build(J, damp=self.damp, generator=problem.generator)
            info["preconditioner"] = {
                "name": spec.name if spec else None,
                "rank": getattr(M, "rank", None) if isinstance(spec, Nystrom) else None,
                "build_time": getattr(M, "build_time", 0.0),
                "build_matvecs": getattr(M, "build_matvecs", 0),
                "build_rmatvecs": getattr(M, "build_rmatvecs", 0),
            }
            solver = self.setting("solver")
            problem.stage(solver.upper())
            with timed(times, "solve", device):
                res = _SOLVERS[solver](
                    J,
                    b,
                    damp=self.damp,
                    atol=self.setting("atol"),
                    btol=self.setting("btol"),
                    conlim=self.setting("conlim"),
                    maxiter=self.setting("maxiter"),
                    M=M,
                )
        info["solver"] = res
        info["iterations"] = res.itn
        info["times"] = times
        return res.x, info
