"""Matrix-free Krylov LSR: damped least squares on the Jacobian operator itself."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .._checks import check_choice, check_nonnegative_int, check_positive_int, check_tolerance
from .._progress import product_counter
from .._utils import timed
from ..precond import Jacobi, Nystrom, Sketch, as_preconditioner
from ..precond._specs import Auto
from ..randomized._lowrank import stream_rows
from ..solvers import SolverInterrupted, SolverState, lsmr, lsqr
from ._memory import largest
from ._methods import Method, Problem
from ._precision import MixedPrecisionOperator, noise_floor
from ._sample_space import solve_sample_space

__all__ = ["Krylov"]

_DEFAULTS = {"solver": "lsmr", "maxiter": 300, "atol": 1e-8, "btol": 1e-8, "conlim": 1e12}
_SOLVERS = {"lsmr": lsmr, "lsqr": lsqr}
_PRECISIONS = ("auto", "working", "mixed", "float64")
_LOW = (torch.float32, torch.float16, torch.bfloat16)
_CHECKPOINT_FORMAT = "lsr_scale.Krylov.checkpoint"


class _EarlyStop(KeyboardInterrupt):
    """Raised from the solver's callback to end the iteration early (caught in ``solve``).

    It rides on the solvers' interrupt path, which hands back the latest iterate and its
    numbers (:class:`~lsr_scale.solvers.SolverInterrupted`).
    """


@dataclass(frozen=True)
class Krylov(Method):
    """Matrix-free LSR: ``min ||G0 delta + f0||^2 + damp^2 ||delta||^2`` by a Krylov solver.

    Parameter space runs LSMR (or LSQR) on ``G0`` with a right preconditioner; sample space
    (for ``n << m``) solves ``(G0 G0^T + damp^2 I) z = -f0`` by preconditioned CG and
    returns ``delta = G0^T z``. Early stopping and ``damp`` are the regularizers, as the rank
    is for :class:`Subspace`.

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
        Tikhonov damping (a filter: singular values below ``damp`` are damped).
    target_rank : int, optional
        Aim the solve at this effective rank instead of giving ``damp``: ``damp`` is set to
        the estimate of ``sigma_k`` from the Nystrom preconditioner's spectrum (its rank must
        be at least ``k``), so directions above ``sigma_k`` pass and those below are damped,
        as truncation at rank ``k`` does for :class:`Subspace`.
    maxiter : int, optional
        Iteration limit (default 300). Reaching it warns, and ``info["stop"]`` says so.
    atol, btol : float, optional
        scipy's LSMR/LSQR stopping tolerances (defaults 1e-8). In sample space ``atol`` is
        CG's relative tolerance ``||b - (G0 G0^T + damp^2) z|| <= atol ||b||`` and ``btol``
        does not apply.
    conlim : float, optional
        LSMR/LSQR condition-number limit (default 1e12); parameter space only.
    space : {"parameter", "sample", "auto"}
        ``"auto"`` picks sample space when ``2 n <= m``.
    precision : {"auto", "working", "mixed", "float64"}
        ``"mixed"``: the solver, its scalars and the preconditioner run in float64 around
        products in the model's precision, and the preconditioner is truncated at that
        precision's noise floor (:func:`~lsr_scale.refine._precision.noise_floor`), which it
        would otherwise amplify. ``"float64"``: products in float64 too, on a float64 copy
        of the model (``data=`` refinements; the returned predictor keeps the model's dtype).
        ``"working"``: everything in the model's precision (0.1's behaviour). ``"auto"``
        (default): ``"float64"`` for ``data=`` refinements of a lower-precision model,
        ``"mixed"`` for ``residual_fn`` ones. Measured in ``docs/solvers.md``.
    stall : float or None
        Stop when ``||r||`` fell by less than this fraction over the last ``check_every``
        iterations (default 0.03); ``None`` turns the rule off.
    check_every : int
        How often (iterations) the stall rule and the validation error are checked.
    patience : int
        With ``refine(..., validation=...)``: stop after this many checks without a new best
        validation error; the best iterate is returned.
    checkpoint : str or Path, optional
        Write the solver state there every ``checkpoint_every`` iterations (with the
        generator state the preconditioner was built from).
    checkpoint_every : int
        Iterations between checkpoints (default 50).
    resume : str or Path, optional
        Continue from a checkpoint written by a solve with the same settings and problem: the
        preconditioner is rebuilt from the saved generator state, and the iterates continue
        exactly.

    Raises
    ------
    ValueError, TypeError
        At construction, on invalid values or settings that do not apply (``btol``,
        ``conlim`` or ``solver`` with a space that may be the sample space, a sketch or
        Jacobi preconditioner there, ``target_rank`` with ``damp`` or without a Nystrom
        preconditioner).
    """

    solver: str | None = None
    preconditioner: object = "auto"
    damp: float = 0.0
    target_rank: int | None = None
    maxiter: int | None = None
    atol: float | None = None
    btol: float | None = None
    conlim: float | None = None
    space: str = "parameter"
    precision: str = "auto"
    stall: float | None = 0.03
    check_every: int = 10
    patience: int = 5
    checkpoint: str | Path | None = None
    checkpoint_every: int = 50
    resume: str | Path | None = None

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
        check_choice(self.precision, _PRECISIONS, "Krylov.precision")
        if self.stall is not None:
            check_tolerance(self.stall, "Krylov.stall")
        check_positive_int(self.check_every, "Krylov.check_every")
        check_positive_int(self.patience, "Krylov.patience")
        check_positive_int(self.checkpoint_every, "Krylov.checkpoint_every")
        pc = self.preconditioner
        if self.target_rank is not None:
            check_positive_int(self.target_rank, "Krylov.target_rank")
            if self.damp:
                raise ValueError(
                    "Krylov.target_rank: sets damp from the spectrum, got it with "
                    f"damp={self.damp!r}; give one of them"
                )
            if not isinstance(pc, (Nystrom, Auto)) or self.space != "parameter":
                raise ValueError(
                    "Krylov.target_rank: reads sigma_k from a Nystrom preconditioner in parameter "
                    f"space, got preconditioner={pc!r}, space={self.space!r}"
                )
            nys = pc.nystrom if isinstance(pc, Auto) else pc
            if nys.rank is not None and nys.rank < self.target_rank:
                raise ValueError(
                    f"Krylov.target_rank: expected <= the Nystrom rank {nys.rank}, "
                    f"got {self.target_rank}"
                )
        if self.space != "parameter":
            for k in ("solver", "btol", "conlim", "checkpoint", "resume"):
                if getattr(self, k) is not None:
                    raise ValueError(
                        f"Krylov.{k}: applies to space='parameter' only (sample space runs CG), "
                        f"got it with space={self.space!r}"
                    )
            if isinstance(pc, (Sketch, Jacobi)):
                raise ValueError(
                    "Krylov.preconditioner: sample space takes a Nystrom preconditioner or None, "
                    f"got {pc.name!r} with space={self.space!r}"
                )

    # ------------------------------------------------------------------ Method hooks
    def validation_use(self) -> str:
        return "optional"

    def product_dtype(self, model_dtype, *, has_data, device=None):
        if self.precision == "float64":
            return torch.float64
        if self.precision == "auto" and model_dtype in _LOW and fast_float64(device)[0]:
            return torch.float64
        return None

    def precision_choice(self, model_dtype, *, has_data: bool, device=None) -> dict:
        """What ``precision`` resolves to for this problem, and why (``info["precision"]``)."""
        if self.precision != "auto":
            return {"precision": self.precision, "reason": "given"}
        if model_dtype not in _LOW:
            return {"precision": "working", "reason": f"the model is {_name(model_dtype)}"}
        if not has_data:
            return {
                "precision": "mixed",
                "reason": "residual_fn closes over the model, which is not copied to float64",
            }
        fast, why = fast_float64(device)
        return {"precision": "float64" if fast else "mixed", "reason": why}

    def check_problem(self, *, has_data: bool) -> None:
        if self.precision == "float64" and not has_data:
            raise ValueError(
                "Krylov.precision: 'float64' converts a copy of the model, which a residual_fn "
                "closes over; expected data=, or precision='mixed' with residual_fn"
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

    def precond_rank(self, shape, spec) -> int:
        """The Nystrom rank used: the specification's, else its default capped at ``maxiter``
        (a build of ``l`` products cannot pay for itself in fewer than ``l`` iterations)."""
        if spec.rank is not None:
            return spec.rank
        return max(1, min(spec.resolved_rank(shape), self.setting("maxiter")))

    @staticmethod
    def basis_dtype(product_dtype, model_dtype):
        """Storage dtype of a Nystrom basis the user left unset: the model's precision when
        the products run wider (a float32 model with float64 products stores its basis in
        float32, built streamed; see :class:`lsr_scale.precond.Nystrom`), else ``None`` (the
        solve's). With ``precision="mixed"`` (float32 products, float64 solve) the basis
        stays float64: measured on a float32 PINN, a float32 basis there lost accuracy."""
        if model_dtype is None or not model_dtype.is_floating_point:
            return None
        if torch.finfo(model_dtype).bits < torch.finfo(product_dtype).bits:
            return model_dtype
        return None

    def nystrom_spec(self, shape, product_dtype=torch.float64, model_dtype=None):
        """The Nystrom specification a parameter-space solve of this shape builds, with its
        rank and basis storage filled in; ``None`` when it builds none (or not Nystrom)."""
        spec = self.preconditioner
        space = self.resolved_space(shape)
        if isinstance(spec, Auto):
            spec = spec.nystrom if (space == "sample" or self.target_rank) else spec.choose(shape)
        if not isinstance(spec, Nystrom):
            return None
        return self._fill_nystrom(spec, shape, product_dtype, model_dtype)

    def _fill_nystrom(self, spec, shape, product_dtype, model_dtype):
        """``spec`` with the rank and (parameter space) basis storage it left unset."""
        if spec.rank is None:
            spec = dataclasses.replace(spec, rank=self.precond_rank(shape, spec))
        if spec.basis_dtype is None and self.resolved_space(shape) == "parameter":
            bdt = self.basis_dtype(product_dtype, model_dtype)
            spec = dataclasses.replace(spec, basis_dtype=bdt)
        return spec

    def solve_dtype(self, product_dtype):
        """The dtype the solver iterates in for products of ``product_dtype``."""
        return product_dtype if self.precision == "working" else torch.float64

    # ------------------------------------------------------------------ planning
    def memory_parts(self, z) -> dict:
        """Bytes of this method's own parts for the sizes ``z`` (:class:`~._memory.Sizes`)."""
        sd = self.solve_dtype(z.product_dtype)
        ss = torch.empty((), dtype=sd).element_size()
        spec = self.nystrom_spec((z.n, z.m), z.product_dtype, z.dtype)
        rank = spec.rank if spec is not None else 0
        if self.resolved_space((z.n, z.m)) == "sample":
            return {
                "solver": 10 * z.n * ss + 3 * z.m * z.s,
                "basis": 4 * z.n * rank * 8,
                "product": z.product(min(z.batch or 64, 64)),
            }
        parts = {"solver": 8 * z.m * ss}
        if spec is None:  # sketch (s x m, s ~ 4 m: tall operators only), Jacobi, none
            parts["product"] = z.product(1)
            return parts
        k = min(rank + spec.oversample, z.n, z.m)
        if spec.is_streamed(sd):
            bs = torch.empty((), dtype=spec.basis_dtype or sd).element_size()
            parts["basis"] = z.m * k * bs
            # the build's phases (lsr_scale.randomized.lowrank_gram_streamed): the QR of
            # A Omega holds three n x k blocks before the basis exists; A^T Q then holds Q
            # beside the basis; its TSQR holds about three float64 row chunks
            tsqr = 3 * 8 * k * min(z.m, stream_rows(k))
            parts["build"] = max(3 * z.n * k * ss - parts["basis"], z.n * k * ss, tsqr)
        else:
            # A^T Q (m x k) and its SVD factor (m x k) side by side; the Gaussian test
            # matrix is drawn (m x k, float64) and freed before A^T Q exists
            parts["build"] = max(2 * z.m * k * ss, z.m * k * 8)
        parts["product"] = z.product(k)
        return parts

    def adapt(self, z, fits):
        """Settings that fit: ``(method, changes)``, ``fits(method) -> bool`` deciding.

        The levers, in order (each kept once taken): (1) the Nystrom basis stored in
        float32 and built streamed, when the solve is in float64; (2) the largest Nystrom
        rank that fits. Each change is a dict with ``setting``, ``from``, ``to``, ``reason``.
        """
        sd = self.solve_dtype(z.product_dtype)
        shape = (z.n, z.m)
        spec = self.nystrom_spec(shape, z.product_dtype, z.dtype)
        if spec is None or self.resolved_space(shape) != "parameter":
            return self, []
        cur = dataclasses.replace(self, preconditioner=spec)
        changes = []
        if not spec.is_streamed(sd) and sd == torch.float64:
            new = dataclasses.replace(spec, basis_dtype=torch.float32, streamed=True)
            changes.append({
                "setting": "Krylov.preconditioner (Nystrom basis)",
                "from": f"{_name(spec.basis_dtype or sd)}, dense build",
                "to": "float32, streamed build",
                "reason": "the basis takes a quarter of the memory (m x k float32, one block)",
            })  # fmt: skip
            spec, cur = new, dataclasses.replace(cur, preconditioner=new)
            if fits(cur):
                return cur, changes

        def fits_rank(r):
            return fits(dataclasses.replace(cur, preconditioner=dataclasses.replace(spec, rank=r)))

        lo = largest(fits_rank, spec.rank)
        if lo >= 1:
            changes.append({
                "setting": "Krylov.preconditioner.rank", "from": spec.rank, "to": lo,
                "reason": "the largest Nystrom rank that fits (fewer directions clustered: "
                "more iterations)",
            })  # fmt: skip
            cur = dataclasses.replace(cur, preconditioner=dataclasses.replace(spec, rank=lo))
        return cur, changes

    # ------------------------------------------------------------------ solve
    def solve(self, problem: Problem):
        J = problem.J
        mixed = self.precision in ("auto", "mixed") and J.dtype != torch.float64
        A = MixedPrecisionOperator(J, torch.float64) if mixed else J
        b = problem.b.to(A.dtype)
        space = self.resolved_space(J.shape)
        spec = self.preconditioner
        if isinstance(spec, Auto):  # target_rank reads the spectrum off a Nystrom build
            # (rows sharded over processes: the sketch does not run there)
            nys_only = space == "sample" or self.target_rank is not None or J.row_sharded
            spec = spec.nystrom if nys_only else spec.choose(J.shape)
        if isinstance(spec, Sketch) and J.row_sharded:
            raise ValueError(
                "Krylov.preconditioner: the sketch preconditioner does not run with rows "
                "sharded over processes (lsr_scale.distributed), got it; use "
                "ls.precond.Nystrom(...) or None"
            )
        # products of a narrower precision (float32 ones, or a float64 model that rounds
        # inside: problem.narrow_dtype) carry rounding at its eps * sigma_1; a preconditioner
        # reaching below that level amplifies it, and LSMR's residual then rises
        low = problem.narrow_dtype or (J.dtype if mixed else None)
        if low is not None and isinstance(spec, (Nystrom, Sketch)) and spec.floor is None:
            spec = dataclasses.replace(spec, floor=noise_floor(low))
        if isinstance(spec, Nystrom):
            spec = self._fill_nystrom(spec, J.shape, J.dtype, problem.model_dtype)
        info: dict = {"space": space, "rank": None, "precision": "mixed" if mixed else str(A.dtype)}
        if problem.narrow_dtype is not None:
            info["precision"] += f" (the model rounds to {_name(problem.narrow_dtype)} inside)"
        if problem.model_dtype is not None:
            info["precision_choice"] = self.precision_choice(
                problem.model_dtype, has_data=problem.inputs is not None, device=J.device
            )
        if space == "sample" and J.row_sharded:
            raise ValueError(
                "Krylov.space: sample space is not available with rows sharded over processes "
                f"(lsr_scale.distributed), got space={self.space!r} resolving to 'sample'; "
                "use space='parameter'"
            )
        if space == "sample":
            x, more = self._solve_sample(problem, A, b, spec)
        else:
            x, more = self._solve_parameter(problem, A, b, spec)
        info.update(more)
        return x.to(J.dtype), info

    def _solve_sample(self, problem, A, b, spec):
        times: dict[str, float] = {}
        rank = self.precond_rank(A.shape, spec) if spec is not None else None
        # the build's 2 rank products, 2 per iteration up to maxiter, 2 for delta and normar
        total = 2 * ((rank or 0) + self.setting("maxiter") + 1)
        problem.stage("sample-space CG", total=total, done=product_counter(problem.J))
        with timed(times, "solve", A.device):
            res = solve_sample_space(
                A,
                b,
                damp=self.damp,
                maxiter=self.setting("maxiter"),
                tol=self.setting("atol"),
                precond_rank=rank,
                generator=problem.generator,
            )
        info = {
            "preconditioner": {"name": spec.name if spec else None, "rank": rank},
            "solver": res,
            "iterations": res.itn,
            "times": times,
            "stop": _stop_text(res),
        }
        _warn_maxiter(res, info["stop"], preconditioned=rank is not None)
        return res.x, info

    def _solve_parameter(self, problem, A, b, spec):
        device = A.device
        times: dict[str, float] = {}
        saved = self._load_checkpoint() if self.resume is not None else None
        gen = problem.generator
        gen_state = _rng_state(gen)
        if saved is not None:  # rebuild the preconditioner from the same draws
            _set_rng_state(gen, saved["generator_state"])
            gen_state = saved["generator_state"]
        problem.stage(
            f"build {spec.name if spec else 'no'} preconditioner",
            total=_build_products(spec, A.shape),
            done=product_counter(problem.J),
        )
        with timed(times, "precond_build", device):
            M = None
            if isinstance(spec, Nystrom):  # its products in the batches refine chose
                M = spec.build(
                    A, damp=self.damp, generator=gen, block_size=problem.products.batch_size
                )
            elif spec is not None:
                M = spec.build(A, damp=self.damp, generator=gen)
            damp = self.damp
            if self.target_rank is not None:
                damp = _sigma_k(M, self.target_rank)
                M.set_damp(damp)
        pinfo = {
            "name": spec.name if spec else None,
            "rank": getattr(M, "rank", None) if isinstance(spec, (Nystrom, Sketch)) else None,
            "truncated": getattr(M, "truncated", None),  # a rank-deficient sketch
            "basis_dtype": _name(M.blocks[-1].dtype) if isinstance(spec, Nystrom) else None,
            "streamed": getattr(M, "streamed", None),
            "build_time": getattr(M, "build_time", 0.0),
            "build_matvecs": getattr(M, "build_matvecs", 0),
            "build_rmatvecs": getattr(M, "build_rmatvecs", 0),
            # the Nystrom estimate of the top singular values of A (descending)
            "sigma": (
                M.eigenvalues.clamp_min(0).sqrt().tolist() if isinstance(spec, Nystrom) else None
            ),
        }
        monitor = _Monitor(self, problem, A)
        vjps0 = A.num_rmatvecs
        solver = self.setting("solver")
        done0 = int(saved["solver_state"]["itn"]) if saved is not None else 0
        problem.stage(
            solver.upper(),
            total=self.setting("maxiter") - done0,  # an upper bound: the rules stop it earlier
            # one VJP starts the bidiagonalization and one per iteration follows; the stall
            # and validation checks take none
            done=lambda: max(0, A.num_rmatvecs - vjps0 - 1),
            unit="iterations",
        )
        kw = dict(
            damp=damp,
            atol=self.setting("atol"),
            btol=self.setting("btol"),
            conlim=self.setting("conlim"),
            maxiter=self.setting("maxiter"),
            M=M,
            callback=monitor,
            check_every=1,
        )
        if self.checkpoint is not None:
            kw.update(
                checkpoint=lambda st: _save_checkpoint(self.checkpoint, st, gen_state),
                checkpoint_every=self.checkpoint_every,
            )
        if saved is not None:
            kw["resume"] = SolverState.from_dict(saved["solver_state"])
        interrupted = False
        with timed(times, "solve", device):
            try:
                res = _SOLVERS[solver](A, b, **kw)
            except SolverInterrupted as err:
                res = err.result
                cause = err.__cause__ or err.__context__
                interrupted = not isinstance(cause, _EarlyStop)
                if interrupted:
                    warnings.warn(
                        f"Krylov: interrupted after {res.itn} iterations; returning the "
                        + ("best validation iterate" if monitor.best is not None else "latest")
                        + " iterate (info['interrupted'] is True)",
                        RuntimeWarning,
                        stacklevel=4,
                    )
        x = res.x
        if monitor.best is not None:
            x = monitor.best
        stop = monitor.reason or _stop_text(res)
        if interrupted:
            stop = "interrupted (KeyboardInterrupt)"
        info = {
            "preconditioner": pinfo,
            "damp": damp,
            "solver": res,
            "iterations": res.itn,
            "times": times,
            "stop": stop,
            "interrupted": interrupted,
        }
        if monitor.val_history:
            info["validation"] = {
                "history": monitor.val_history,
                "best_iteration": monitor.best_itn,
                "best_rel_l2": monitor.best_err,
            }
        if not interrupted and monitor.reason is None:
            _warn_maxiter(
                res, stop, validated=bool(monitor.val_history), preconditioned=M is not None
            )
        return x, info

    def _load_checkpoint(self):
        path = Path(self.resume)
        if not path.exists():
            raise FileNotFoundError(f"Krylov.resume: expected a checkpoint file, got {path}")
        saved = torch.load(path, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(
                f"Krylov.resume: expected a file written by Krylov(checkpoint=...), got {path}"
            )
        return saved


class _Monitor:
    """The solver callback: stall rule and validation early stopping, every few iterations."""

    def __init__(self, method: Krylov, problem: Problem, A):
        self.every = method.check_every
        # the solver calls it (and forms x, one preconditioner apply) every `every` iterations
        self.callback_every = self.every
        self.stall = method.stall
        self.patience = method.patience
        self.reason = None
        self.itn = 0
        self.normr_at = []
        self.best = None
        self.best_err = float("inf")
        self.best_itn = None
        self.val_history = []
        self.waited = 0
        self.Jv = None
        if problem.validation is not None:
            v_in, v_tgt = problem.validation
            self.Jv = problem.jacobian_at(v_in)
            self.q0 = self.Jv.residual
            self.tgt = v_tgt.reshape(-1).to(self.q0.dtype)
            # norms through row_norm: global when the rows are sharded over processes
            self.tnorm = float(self.Jv.row_norm(self.tgt).clamp_min(1e-300))
            err = float(self.Jv.row_norm(self.q0 - self.tgt)) / self.tnorm
            self.val_history.append((0, err))
        self.A = A
        self.b = problem.b

    def __call__(self, x):
        self.itn += self.every
        if self.Jv is not None:
            pred = self.q0 + self.Jv.matvec(x.to(self.Jv.dtype))
            err = float(self.Jv.row_norm(pred - self.tgt)) / self.tnorm
            self.val_history.append((self.itn, err))
            if err < self.best_err:
                self.best_err, self.best_itn, self.best = err, self.itn, x.clone()
                self.waited = 0
            else:
                self.waited += 1
                if self.waited >= self.patience:
                    self.reason = (
                        f"validation: no new best in {self.patience} checks "
                        f"(best at iteration {self.best_itn})"
                    )
                    raise _EarlyStop
            return
        if self.stall is not None:
            # ||r|| from the solver's own history is not visible here: recompute it every
            # check (one product per `every` iterations)
            normr = float(self.A.row_norm(self.A.matvec(x) - self.b.to(self.A.dtype)))
            self.normr_at.append(normr)
            if len(self.normr_at) >= 2:
                prev = self.normr_at[-2]
                if prev - normr < self.stall * normr:
                    self.reason = (
                        f"stalled: ||r|| fell by less than {self.stall:g} over "
                        f"{self.every} iterations"
                    )
                    raise _EarlyStop


def _build_products(spec, shape) -> int | None:
    """Column products of building the preconditioner ``spec`` (for the progress display)."""
    n, m = shape
    if isinstance(spec, Nystrom):
        if spec.method == "nystrom":
            return 2 * min(spec.rank, m)
        return 2 * (1 + spec.power_iters) * min(spec.rank + spec.oversample, n, m)
    if isinstance(spec, Sketch):
        return m  # the columns of A
    if isinstance(spec, Jacobi):  # exact up to JacobiPreconditioner's max_exact=4096
        exact = spec.method == "exact" or (spec.method == "auto" and min(n, m) <= 4096)
        return min(n, m) if exact else spec.num_samples
    return None


# CUDA compute capabilities with full-rate float64 (1/2 of float32): the data-center
# parts P100 (6.0), V100 (7.0), A100 (8.0), H100/H200 (9.0), B200 (10.0). The others run
# float64 at 1/32-1/64 of float32.
_FAST_FLOAT64_SM = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}


def fast_float64(device) -> tuple[bool, str]:
    """``(fast, reason)``: whether float64 products are fast on ``device``."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type != "cuda":
        return True, f"float64 runs at half the float32 rate on the {dev.type}"
    cap = torch.cuda.get_device_capability(dev)
    name = torch.cuda.get_device_name(dev)
    if tuple(cap) in _FAST_FLOAT64_SM:
        return True, f"{name} (sm_{cap[0]}{cap[1]}) runs float64 at half the float32 rate"
    return False, (
        f"{name} (sm_{cap[0]}{cap[1]}) runs float64 at 1/32-1/64 of the float32 rate: "
        "float32 products, float64 solve"
    )


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _stop_text(res):
    if int(res.istop) == 7:  # the solver's generic advice is replaced by _warn_maxiter's
        return "7: the iteration limit was reached before convergence"
    return f"{int(res.istop)}: {res.message}"


def _warn_maxiter(res, stop, validated: bool = False, preconditioned: bool = True):
    if int(res.istop) == 7:
        if validated:
            hint = "the validation error had not stopped improving: raise maxiter"
        elif preconditioned:
            hint = "raise maxiter, pass validation= to refine, or loosen atol/btol"
        else:
            hint = "use a preconditioner (the default), raise maxiter, or loosen atol/btol"
        warnings.warn(
            f"Krylov: stopped at maxiter={res.itn} before any stopping rule was met ({stop}); "
            + hint,
            RuntimeWarning,
            stacklevel=5,
        )


def _sigma_k(M, k: int) -> float:
    lam = getattr(M, "eigenvalues", None)
    if lam is None or lam.numel() < k:
        raise ValueError(
            f"Krylov.target_rank: expected a Nystrom preconditioner of rank >= {k}, got "
            f"{None if lam is None else lam.numel()}"
        )
    return float(lam[k - 1].clamp_min(0).sqrt())


def _rng_state(gen):
    return gen.get_state() if gen is not None else torch.get_rng_state()


def _set_rng_state(gen, state):
    if gen is not None:
        gen.set_state(state)
    else:
        torch.set_rng_state(state)


def _save_checkpoint(path, state, gen_state):
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "solver_state": state.to_dict(),
        "generator_state": gen_state,
    }
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
