"""One-shot LSR (Cao & Zhang): a randomized-SVD subspace and its reduced least-squares problem."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch

from .._checks import (
    check_choice,
    check_inputs,
    check_nonnegative_int,
    check_positive_int,
    check_tolerance,
)
from .._progress import product_counter
from .._utils import timed
from ..operators import LinearOperator, SubspaceOperator
from ..precond import SketchPreconditioner
from ..randomized import randomized_svd
from ..solvers import lsmr
from ._memory import largest
from ._methods import Method, Problem
from ._model import _as_tuple
from ._streaming import ColumnMask, draw_mask, reduced_gram, solve_nested, streamed_basis

__all__ = ["Subspace", "solve_reduced", "default_rank"]

_DEFAULT_MAX_DENSE_BYTES = 2 * 1024**3
#: How many times ``Subspace(rank="auto")`` (its default candidates) rescans at twice the rank
#: when its best validation error is at the largest rank scanned: up to 4x the default rank.
AUTO_RESCANS = 2
_REDUCED_DEFAULTS = {"maxiter": 1000, "atol": 1e-8, "btol": 1e-8, "conlim": 1e12}
DTYPE_HINT = "; convert it, or pass dtype= to refine to work in another precision"


def default_rank(n: int, m: int) -> int:
    """Default subspace rank: a quarter of min(n, m), at least 1 and at most 1000."""
    return max(1, min(1000, min(n, m) // 4))


def solve_reduced(A: torch.Tensor, b: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """Least-squares solution of the dense reduced problem ``min ||A c - b||`` by a truncated SVD.

    Singular values below ``rcond * s_max`` are dropped (default ``rcond`` is
    ``eps * max(A.shape)``, LAPACK's rule). Works identically on CPU and CUDA. When a
    lower-precision SVD does not converge (LAPACK's ``LinAlgError``, seen with float32 on
    MKL), it is computed in float64, with a ``RuntimeWarning``.
    """
    if rcond is None:
        rcond = torch.finfo(A.dtype).eps * max(A.shape)
    try:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    except torch.linalg.LinAlgError as err:  # LAPACK's iteration did not converge
        if A.dtype == torch.float64:
            raise
        warnings.warn(
            f"solve_reduced: the {A.dtype} SVD of the {tuple(A.shape)} reduced matrix did not "
            f"converge ({err}); it was computed in float64 instead",
            RuntimeWarning,
            stacklevel=2,
        )
        U, s, Vh = (t.to(A.dtype) for t in torch.linalg.svd(A.double(), full_matrices=False))
    keep = s > rcond * s[0] if s.numel() else s.bool()
    coef = (U[:, keep].T @ b) / s[keep]
    return Vh[keep].T @ coef


class NestedLstsq:
    """Least-squares solutions of ``min ||A[:, :k] c - b||`` for nested column prefixes ``k``.

    One QR factorization serves every prefix (``A[:, :k] = Q[:, :k] R[:k, :k]``), where
    :func:`solve_reduced` would take a truncated SVD of each: on a 10,000 x 4,000 float32
    matrix here, one QR took 6 s and the SVDs of the prefixes 2,000, 3,000 and 4,000 took
    42 s. When the diagonal of ``R`` spans more than ``1 / rcond`` (``rcond`` as in
    :func:`solve_reduced`), where that SVD would drop directions, every prefix is solved by
    :func:`solve_reduced` instead (``self.qr`` is then False).
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor, rcond: float | None = None):
        self.A, self.b, self.rcond = A, b, rcond
        cut = rcond if rcond is not None else torch.finfo(A.dtype).eps * max(A.shape)
        Q, R = torch.linalg.qr(A)
        d = R.diagonal().abs()
        self.qr = bool(d.numel()) and bool(d.min() > cut * d.max())
        if self.qr:
            self.R, self.qb = R, Q.T @ b

    def solve(self, k: int) -> torch.Tensor:
        """The solution for the first ``k`` columns."""
        if not self.qr:
            return solve_reduced(self.A[:, :k], self.b, self.rcond)
        rhs = self.qb[:k, None]
        return torch.linalg.solve_triangular(self.R[:k, :k], rhs, upper=True)[:, 0]


def matmat_in_blocks(J: LinearOperator, P: torch.Tensor, block: int | None) -> torch.Tensor:
    """``J @ P`` taken ``block`` columns at a time."""
    if not block or block >= P.shape[1]:
        return J.matmat(P)
    return torch.cat([J.matmat(P[:, i : i + block]) for i in range(0, P.shape[1], block)], dim=1)


def _rank_grid(k_max: int) -> list[int]:
    grid, k = [], k_max
    while k >= 1 and len(grid) < 12:
        grid.append(k)
        k = int(k / 1.5)
    return sorted(set(grid))


@dataclass(frozen=True)
class Subspace(Method):
    """One-shot LSR: restrict ``delta = P c`` to a rank-``k`` subspace and solve exactly.

    A randomized SVD of the subspace Jacobian gives ``P = V_k diag(1 / S_k)``; the reduced
    problem ``min ||G0 P c + f0||`` is then solved densely (truncated SVD) or, when ``G0 P``
    would not fit, by sketch-preconditioned LSMR that never stores it.

    Parameters
    ----------
    rank : int or "auto", optional
        The rank ``k``: the capacity knob (too large amplifies noise and ill-conditioning).
        Default :func:`default_rank`. ``"auto"`` scans nested truncations of one randomized
        SVD and keeps the best on ``refine(..., validation=...)``. With the default
        candidates, a best at the largest rank ``k`` rescans at ``2k`` (ranks ``k``,
        ``1.5k``, ``2k`` of a new randomized SVD), at most :data:`AUTO_RESCANS` times (up to
        4x the default rank) and only when the plan's memory budget holds the larger rank;
        ``info["svd_ranks"]`` lists the SVDs taken. When the best is still the largest rank
        scanned, a ``UserWarning`` says a larger rank may be better, and why none was
        scanned (``rank_candidates=`` given, the rescans spent, the budget). A Ctrl-C during
        a rescan returns the best of the scans before it (``info["interrupted"]``).
    oversample : int
        Randomized SVD oversampling (paper: 10).
    power_iters : int
        Power iterations of the range finder.
    subspace : {"residual", "output"}
        Which Jacobian spans the subspace: the residual Jacobian ``G0``, or the output
        Jacobian ``J_q`` at ``subspace_inputs`` (physics-informed problems).
    subspace_inputs : tensor or tuple, optional
        Model inputs for ``subspace="output"`` (default: the data inputs).
    rank_candidates : sequence of int, optional
        Candidate ranks for ``rank="auto"`` (default: a geometric grid, ratio 1.5, up to
        :func:`default_rank`, so that the scan costs the randomized SVD of the fixed default
        rank and little more when its best is inside the grid:
        ``bench/results/profile_rank_auto_cpu.md``; the rescans above). Given candidates are
        scanned as given, never rescanned.
    reduced : {"auto", "dense", "lsmr"}
        How the reduced problem is solved. ``"auto"`` is dense when ``G0 P`` takes at most
        ``max_dense_bytes``.
    max_dense_bytes : int
        The size limit of the dense reduced matrix (default 2 GiB).
    rcond : float, optional
        Relative singular-value cut-off of the dense solve (see :func:`solve_reduced`).
    reduced_maxiter, reduced_atol, reduced_btol : optional
        The reduced LSMR's settings (defaults 1,000, 1e-8, 1e-8); only with ``reduced``
        other than ``"dense"``.
    range_finder : {"dense", "streamed"}
        ``"dense"`` (default): the randomized SVD, which stores the ``n x (k+p)`` sketch.
        ``"streamed"``: the memory-bounded basis of :mod:`lsr_scale.refine._streaming`
        (``m x k`` and ``k x k`` only; rank ``k`` is the subspace of ``k`` test vectors, so
        ``oversample`` and ``power_iters`` must be 0). It needs ``reduced`` ``"auto"`` or
        ``"streamed"`` and resolves directions down to about ``1e-8 sigma_1`` in float64.
    basis_dtype : torch.dtype, optional
        Storage dtype of the streamed basis (e.g. ``torch.float32``: half the memory; products
        and accumulations stay in the operator's dtype). Only with ``range_finder="streamed"``.
    fraction : float, optional
        Refine a random ``fraction`` of the parameter entries (the authors' p), drawn from the
        generator; the other entries keep their trained values. Default: all.

    Notes
    -----
    ``reduced="streamed"`` solves the reduced problem from the Gram of ``G0 P``, taken a batch
    of columns at a time (never stored), by a nested Cholesky factorization;
    ``info["train_loss_by_rank"]`` then holds the linearized training loss of every rank.

    Raises
    ------
    ValueError, TypeError
        At construction, on invalid values or on settings that do not apply to the others
        (``rank_candidates`` without ``rank="auto"``, ``subspace_inputs`` with
        ``subspace="residual"``, ``reduced_*`` or ``max_dense_bytes`` that cannot be used).

    References
    ----------
    W. Cao and W. Zhang, "A universal linearized subspace refinement framework for neural
    networks", arXiv:2601.13989 (2026).
    """

    rank: int | str | None = None
    oversample: int = 10
    power_iters: int = 0
    subspace: str = "residual"
    subspace_inputs: object = field(default=None, compare=False, repr=False)
    rank_candidates: tuple | None = None
    reduced: str = "auto"
    max_dense_bytes: int = _DEFAULT_MAX_DENSE_BYTES
    rcond: float | None = None
    reduced_maxiter: int | None = None
    reduced_atol: float | None = None
    reduced_btol: float | None = None
    range_finder: str = "dense"
    basis_dtype: torch.dtype | None = None
    fraction: float | None = None

    name = "subspace"

    def __post_init__(self):
        r = self.rank
        if r is not None and r != "auto":
            if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
                raise ValueError(f"Subspace.rank: expected a positive int or 'auto', got {r!r}")
        check_nonnegative_int(self.oversample, "Subspace.oversample")
        check_nonnegative_int(self.power_iters, "Subspace.power_iters")
        check_choice(self.subspace, ("residual", "output"), "Subspace.subspace")
        check_choice(self.reduced, ("auto", "dense", "lsmr", "streamed"), "Subspace.reduced")
        self._check_streaming()
        check_positive_int(self.max_dense_bytes, "Subspace.max_dense_bytes")
        if self.rcond is not None:
            check_tolerance(self.rcond, "Subspace.rcond")
        if self.subspace_inputs is not None and self.subspace != "output":
            raise ValueError(
                "Subspace.subspace_inputs: applies to subspace='output' only, got it with "
                f"subspace={self.subspace!r}"
            )
        if self.rank_candidates is not None:
            if r != "auto":
                raise ValueError(
                    f"Subspace.rank_candidates: applies to rank='auto' only, got rank={r!r}"
                )
            cands = tuple(self.rank_candidates)
            if not cands:
                raise ValueError("Subspace.rank_candidates: expected at least one rank, got none")
            for c in cands:
                check_positive_int(c, "Subspace.rank_candidates[...]")
            object.__setattr__(self, "rank_candidates", cands)
        if r == "auto" and self.reduced == "lsmr":
            raise ValueError(
                "Subspace.reduced: rank='auto' scans truncations of the dense reduced matrix, "
                "expected reduced='auto' or 'dense', got 'lsmr'"
            )
        lsmr_settings = {
            "reduced_maxiter": self.reduced_maxiter,
            "reduced_atol": self.reduced_atol,
            "reduced_btol": self.reduced_btol,
        }
        given = [k for k, v in lsmr_settings.items() if v is not None]
        if given and self.reduced == "dense":
            raise ValueError(
                f"Subspace.{given[0]}: applies to the reduced LSMR, got it with reduced='dense'"
            )
        if self.reduced_maxiter is not None:
            check_nonnegative_int(self.reduced_maxiter, "Subspace.reduced_maxiter")
        for k in ("reduced_atol", "reduced_btol"):
            if getattr(self, k) is not None:
                check_tolerance(getattr(self, k), f"Subspace.{k}")
        if self.max_dense_bytes != _DEFAULT_MAX_DENSE_BYTES and self.reduced != "auto":
            raise ValueError(
                "Subspace.max_dense_bytes: decides reduced='auto' only, got it with "
                f"reduced={self.reduced!r}"
            )

    def _check_streaming(self) -> None:
        check_choice(self.range_finder, ("dense", "streamed"), "Subspace.range_finder")
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ValueError(f"Subspace.fraction: expected a float in (0, 1], got {f!r}")
        bd = self.basis_dtype
        if bd is not None:
            if not isinstance(bd, torch.dtype) or not bd.is_floating_point or bd.is_complex:
                raise TypeError(f"Subspace.basis_dtype: expected a real torch dtype, got {bd!r}")
            if self.range_finder != "streamed":
                raise ValueError(
                    "Subspace.basis_dtype: applies to range_finder='streamed', got it with "
                    f"range_finder={self.range_finder!r}"
                )
        if self.range_finder != "streamed" and self.reduced != "streamed":
            return
        if self.rank == "auto":
            raise ValueError(
                "Subspace.rank: the streamed route takes a fixed rank (every smaller rank's "
                "training loss comes free in info), expected an int, got 'auto'"
            )
        if self.subspace != "residual":
            raise ValueError(
                "Subspace.subspace: the streamed route spans the residual Jacobian, expected "
                f"'residual', got {self.subspace!r}"
            )
        if self.rcond is not None:
            raise ValueError(
                "Subspace.rcond: applies to the dense reduced solve, got it with the streamed route"
            )
        if self.range_finder == "streamed":
            if self.reduced not in ("auto", "streamed"):
                raise ValueError(
                    "Subspace.reduced: range_finder='streamed' stores no n x k matrix, "
                    f"expected 'auto' or 'streamed', got {self.reduced!r}"
                )
            for name in ("oversample", "power_iters"):
                if getattr(self, name):
                    raise ValueError(
                        f"Subspace.{name}: range_finder='streamed' uses k test vectors for "
                        f"rank k, expected 0, got {getattr(self, name)}"
                    )

    def validation_use(self) -> str:
        return "required" if self.rank == "auto" else "unused"

    # ------------------------------------------------------------------ planning
    def resolved_rank(self, shape) -> int:
        """The rank ``k`` of the subspace for an ``(n, m)`` problem (the largest candidate
        with ``rank="auto"``)."""
        n, m = shape
        if self.rank == "auto":
            return max(self.rank_candidates) if self.rank_candidates else default_rank(n, m)
        return default_rank(n, m) if self.rank is None else self.rank

    def memory_parts(self, z) -> dict:
        """Bytes of this method's own parts for the sizes ``z`` (:class:`~._memory.Sizes`)."""
        r = min(self.resolved_rank((z.n, z.m)), z.n, z.m)
        m_eff = int(math.ceil(z.m * self.fraction)) if self.fraction is not None else z.m
        if self.range_finder == "streamed":
            # the build holds the test vectors and G0^T G0 Omega (m x k each, products'
            # dtype); the basis (basis_dtype) replaces them, so it never adds to that peak
            return {"basis": 2 * m_eff * r * z.s + 3 * r * r * 8, "product": z.product(z.batch)}
        k = min(r + self.oversample, z.n, m_eff)
        # one m x (k + p) block: the test vectors, then A^T Q, whose SVD runs in its storage
        # and leaves P there; two while a batch of A^T Q columns is stacked
        parts = {"basis": m_eff * k * z.s, "product": z.product(k)}
        dense = z.n * r * z.s
        if self.reduced == "dense" or (self.reduced == "auto" and dense <= self.max_dense_bytes):
            parts["reduced"] = 3 * dense
        else:
            parts["reduced"] = 8 * r * z.s + 4 * z.n * z.s
        return parts

    def adapt(self, z, fits):
        """Settings that fit: ``(method, changes)``, ``fits(method) -> bool`` deciding.

        The lever is the rank: the largest that fits (with ``rank="auto"``, the largest
        candidate ranks). The default route already holds a single ``m x (k + p)`` block
        (its SVD runs in place) and switches its reduced problem to LSMR when ``n x k``
        exceeds ``max_dense_bytes``; the streamed route (two ``m x k`` blocks while its
        basis is built) is no leaner, so it is not a lever. Each change is a dict with
        ``setting``, ``from``, ``to``, ``reason``.
        """
        k0 = min(self.resolved_rank((z.n, z.m)), z.n, z.m)
        if self.rank == "auto":
            cands = self.rank_candidates or tuple(_rank_grid(k0))
            best = largest(lambda k: fits(replace(self, rank_candidates=_capped(cands, k))), k0)
            if best < 1:
                return self, []
            capped = _capped(cands, best)
            change = {
                "setting": "Subspace.rank_candidates", "from": list(cands), "to": list(capped),
                "reason": "the largest candidate ranks that fit",
            }  # fmt: skip
            return replace(self, rank_candidates=capped), [change]
        best = largest(lambda k: fits(replace(self, rank=k)), k0)
        if best < 1:
            return self, []
        change = {
            "setting": "Subspace.rank", "from": k0, "to": best,
            "reason": "the largest rank that fits (a smaller subspace: less accurate, or "
            "less noise)",
        }  # fmt: skip
        return replace(self, rank=best), [change]

    def plan_notes(self, z, fits) -> list[str]:
        """``rank="auto"`` with its default candidates: the rescans the budget would allow."""
        if self.rank != "auto" or self.rank_candidates is not None:
            return []
        if self.range_finder == "streamed" or self.reduced == "streamed":
            return []
        k = min(self.resolved_rank((z.n, z.m)), z.n, z.m)
        ranks, blocked = [], ""
        for _ in range(AUTO_RESCANS):
            if k >= min(z.n, z.m):
                break
            k = min(2 * k, z.n, z.m)
            blocked = self._rescan_blocked(k, z.n * z.s, fits)
            if blocked:
                break
            ranks.append(k)
        if not ranks and not blocked:
            return []
        msg = "Subspace(rank='auto'): if its best validation rank is the largest scanned, "
        if ranks:
            msg += "it rescans at rank " + ", then ".join(map(str, ranks)) + " (they fit)"
            return [msg + (f"; not beyond: {blocked}" if blocked else "")]
        return [msg + f"no rescan runs: {blocked}"]

    def check_problem(self, *, has_data: bool) -> None:
        if self.subspace == "output" and self.subspace_inputs is None and not has_data:
            raise ValueError(
                "Subspace.subspace_inputs: expected model inputs for subspace='output' with "
                "residual_fn, got None"
            )

    # ------------------------------------------------------------------ solve
    def solve(self, problem: Problem):
        J, b = problem.J, problem.b
        if J.row_sharded:  # its reduced problem is dense in the rows
            raise ValueError(
                "Subspace: expected a Jacobian on one process, got one with rows sharded over "
                "processes (lsr_scale.distributed); use ls.Krylov there"
            )
        device = J.device
        times: dict[str, float] = {}
        info: dict = {}
        batch = problem.products.batch_size
        if self.subspace == "output":
            sub_in = _as_tuple(
                self.subspace_inputs if self.subspace_inputs is not None else problem.inputs
            )
            check_inputs(sub_in, "subspace_inputs", J.dtype, device, hint=DTYPE_HINT)
            Js = problem.jacobian_at(sub_in)
        else:
            Js = J
        idx = None
        if self.fraction is not None:
            idx = draw_mask(J.shape[1], self.fraction, problem.generator)
            J = Js = ColumnMask(J, idx)
            info["fraction"] = self.fraction
            info["refined_entries"] = int(idx.numel())
        ns, m = Js.shape
        max_rank = min(ns, m)
        auto = self.rank == "auto"
        if auto:
            k = max(self.rank_candidates) if self.rank_candidates else default_rank(ns, m)
            k = min(k, max_rank)
        else:
            k = default_rank(ns, m) if self.rank is None else self.rank
            if k > max_rank:
                raise ValueError(
                    f"Subspace.rank: expected <= min(n, m) = min({ns}, {m}) = {max_rank}, got {k}"
                )
        n = J.shape[0]
        if self.range_finder == "streamed" or self.reduced == "streamed":
            delta, info = self._solve_streamed(problem, J, k, info, times)
            return _embed(delta, idx, problem.J.shape[1]), info
        dense_bytes = n * k * torch.finfo(J.dtype).bits // 8
        use_dense = self.reduced == "dense" or (
            self.reduced == "auto" and dense_bytes <= self.max_dense_bytes
        )
        if auto and not use_dense:
            raise ValueError(
                f"Subspace: rank='auto' needs the dense reduced matrix (n x k = "
                f"{dense_bytes / 2**30:.1f} GiB), expected at most max_dense_bytes = "
                f"{self.max_dense_bytes / 2**30:.1f} GiB; raise it or give a rank"
            )
        # ---------------------------------------------------------- randomized SVD
        P, S = self._range(Js, k, problem, times)
        info["rank"] = k
        info["singular_values"] = S.detach().cpu()
        # ---------------------------------------------------------- reduced problem
        problem.stage("reduced problem", total=k if use_dense else None, done=product_counter(J))
        info["reduced_solver"] = "dense" if use_dense else "lsmr"
        if use_dense:
            with timed(times, "reduced", device):
                A = matmat_in_blocks(J, P, batch)
            if auto:  # times its rescans' SVDs as "range_finder", the rest as "reduced"
                held = [A, P]  # handed over, so that a rescan can free them
                del A, P
                A, P, kept = self._auto_rank(held, Js, J, k, problem, info, times)
                if kept is not None:  # a rescan interrupted: the scans before it decided
                    info["solver"] = {"kind": "rank_scan", "rcond": self.rcond}
                    info["times"] = times
                    return _embed(kept, idx, problem.J.shape[1]), info
            with timed(times, "reduced", device):
                c = solve_reduced(A, b, self.rcond)
            info["solver"] = {"kind": "truncated_svd_lstsq", "rcond": self.rcond}
        else:
            with timed(times, "reduced", device):
                Aop = SubspaceOperator(J, P)
                M = SketchPreconditioner(Aop, generator=problem.generator)
                res = lsmr(
                    Aop,
                    b,
                    atol=_or(self.reduced_atol, "atol"),
                    btol=_or(self.reduced_btol, "btol"),
                    conlim=_REDUCED_DEFAULTS["conlim"],
                    maxiter=_or(self.reduced_maxiter, "maxiter"),
                    M=M,
                )
            c = res.x
            info["solver"] = res
            info["preconditioner"] = {"name": "sketch", "build_time": M.build_time}
        info["times"] = times
        return _embed(P @ c, idx, problem.J.shape[1]), info

    def _range(self, Js, k: int, problem: Problem, times: dict, label="randomized SVD"):
        """``P = V_k diag(1 / S_k)`` of a rank-``k`` randomized SVD of ``Js``, and ``S_k``."""
        max_rank = min(Js.shape)
        problem.stage(
            label,
            total=_svd_products(self, k, Js.shape),
            done=product_counter(Js),
        )
        with timed(times, "range_finder", Js.device):
            _, S, Vh = randomized_svd(
                Js,
                k,
                oversample=min(self.oversample, max_rank - k),
                power_iters=self.power_iters,
                generator=problem.generator,
                block_size=problem.products.batch_size,
            )
        return Vh.T.div_(S), S  # P over Vh's storage (no m x k copy)

    def _auto_rank(self, held: list, Js, J, k: int, problem: Problem, info: dict, times: dict):
        """``rank="auto"``: the validation scan of nested truncations, rescanned at twice the
        rank (at most :data:`AUTO_RESCANS` times, while the budget allows) when its best is
        the largest rank of its grid. ``held`` is ``[A, P]`` (emptied: a rescan frees them
        before it builds the larger basis); returns ``(A, P, None)`` cut to the rank chosen,
        or ``(None, None, delta)`` when a Ctrl-C stopped a rescan before it scored a rank
        (``delta`` is the best of the scans before it)."""
        A, P = held
        held.clear()
        max_rank = min(Js.shape)
        cands = self.rank_candidates or _rank_grid(k)
        scan: list = []
        svd_ranks = [k]
        kept = None  # the delta of the scans before a rescan, kept for a Ctrl-C during it
        while True:
            try:
                with timed(times, "reduced", J.device):
                    best, more, interrupted, c = self._scan_ranks(A, problem.b, P, problem, k,
                                                                  cands)  # fmt: skip
            except KeyboardInterrupt:  # before the rescan's first rank was scored
                if kept is None:
                    raise
                return self._rescan_interrupted(kept, k, scan, svd_ranks, info)
            scan += [dict(r, svd_rank=k) for r in more]
            edge = not interrupted and len(scan) > 1 and best == k < max_rank
            if not edge:
                break
            why = self._no_rescan(k, max_rank, len(svd_ranks) - 1, J.shape[0], J.dtype, problem)
            if why:
                break
            kept = (best, P[:, :best] @ c)  # an m-vector
            k2 = min(2 * k, max_rank)
            k, cands = k2, sorted({r for r in (k, (3 * k) // 2, k2) if r <= k2})
            larger = problem.plan.estimate(replace(self, rank_candidates=(k,)))
            del A, P  # before the larger basis is built
            try:
                P, S = self._range(Js, k, problem, times, f"randomized SVD, rank {k} (rescan)")
                with timed(times, "reduced", J.device):
                    A = matmat_in_blocks(J, P, problem.products.batch_size)
            except KeyboardInterrupt:
                return self._rescan_interrupted(kept, k, scan, svd_ranks, info)
            svd_ranks.append(k)
            info["singular_values"] = S.detach().cpu()
            info["memory_estimate"] = larger.parts  # what the plan would say of this rank
            info.setdefault("plan_notes", []).append(
                f"Subspace(rank='auto') rescanned at rank {k}: estimated peak {larger.describe()}"
            )
        info.update(rank_scan=scan, rank=best, interrupted=interrupted, svd_ranks=svd_ranks)
        if edge:
            warnings.warn(
                f"Subspace(rank='auto'): the best validation error is at the largest rank "
                f"scanned, {best}, so a larger rank may be better still ({why}; at most "
                f"min(n, m) = {max_rank}; ls.plan shows the memory of a rank; "
                "info['rank_scan'] has the errors)",
                UserWarning,
                stacklevel=5,
            )
        return A[:, :best], P[:, :best], None

    @staticmethod
    def _rescan_interrupted(kept, k: int, scan: list, svd_ranks: list, info: dict):
        """A Ctrl-C during a rescan: the best of the scans before it, ``(None, None, delta)``."""
        best, delta = kept
        warnings.warn(
            f"Subspace(rank='auto'): the rescan at rank {k} was interrupted; returning the "
            f"best rank of the scans before it, {best} (info['interrupted'] is True)",
            RuntimeWarning,
            stacklevel=6,  # the caller of refine (this runs below _auto_rank)
        )
        info.update(rank_scan=scan, rank=best, interrupted=True, svd_ranks=svd_ranks)
        return None, None, delta

    def _rescan_blocked(self, k: int, row_bytes: int, fits) -> str:
        """What keeps a rescan at rank ``k`` from running ('' when nothing does): its dense
        reduced matrix (``row_bytes`` per column) or the budget (``fits(method) -> bool``;
        ``None``: no memory plan, DataLoader data). The plan's notes and the run ask the same."""
        if row_bytes * k > self.max_dense_bytes:
            return f"rank {k}'s reduced matrix exceeds max_dense_bytes={self.max_dense_bytes}"
        if fits is None:
            return (
                f"DataLoader data has no memory plan to check rank {k} against; pass "
                "rank_candidates= with larger ranks to scan them"
            )
        if not fits(replace(self, rank_candidates=(k,))):
            return f"rank {k} does not fit the memory budget; pass memory_budget= to allow it"
        return ""

    def _no_rescan(self, k, max_rank, rescans, n, dtype, problem: Problem) -> str:
        """Why ``rank="auto"`` does not rescan at ``2 k`` ('' when it does)."""
        k2 = min(2 * k, max_rank)
        if self.rank_candidates is not None:
            return "pass rank_candidates= with larger ranks to scan them"
        if rescans >= AUTO_RESCANS:
            return (
                f"the scan stops after {AUTO_RESCANS} rescans at twice the rank; pass "
                "rank_candidates= with larger ranks to scan them"
            )
        fits = problem.plan.within_budget if problem.plan is not None else None
        return self._rescan_blocked(k2, n * torch.finfo(dtype).bits // 8, fits)

    def _solve_streamed(self, problem: Problem, J, k: int, info: dict, times: dict):
        """The memory-bounded route (:mod:`lsr_scale.refine._streaming`)."""
        device, batch, b = J.device, problem.products.batch_size, problem.b
        streamed = self.range_finder == "streamed"
        problem.stage(
            "streamed basis" if streamed else "randomized SVD",
            total=2 * k if streamed else _svd_products(self, k, J.shape),
            done=product_counter(J),
        )
        with timed(times, "range_finder", device):
            if self.range_finder == "streamed":
                P, binfo = streamed_basis(
                    J, k, generator=problem.generator, batch=batch, basis_dtype=self.basis_dtype
                )
                info["basis_rank"] = binfo["rank"]
            else:
                _, S, Vh = randomized_svd(
                    J,
                    k,
                    oversample=min(self.oversample, min(J.shape) - k),
                    power_iters=self.power_iters,
                    generator=problem.generator,
                    block_size=batch,
                )
                P = Vh.T.div_(S)
                info["singular_values"] = S.detach().cpu()
        problem.stage(
            "reduced problem (streamed)", total=2 * P.shape[1] + 1, done=product_counter(J)
        )
        with timed(times, "reduced", device):
            C, r, bb = reduced_gram(J, P, b, batch=batch)
            coefs, sinfo = solve_nested(C, r, bb, [P.shape[1]])
            c = coefs[P.shape[1]]
        kk = c.numel()
        info["rank"] = kk
        if kk < k:
            msg = (
                f"Subspace: the streamed basis resolves {kk} of rank={k} directions (the rest "
                "is below the Gram's float64 resolution); the last directions before that cap "
                "are near rounding level (on Burgers, k at the cap fitted noise), so pass a "
                "rank a little below it or use range_finder='dense'"
            )
            info["rank_capped"] = msg
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        info["reduced_solver"] = "streamed"
        info["solver"] = {"kind": "gram_nested_cholesky", "rank_cap": sinfo["rank_cap"]}
        info["train_loss_by_rank"] = sinfo["train_loss"]
        info["times"] = times
        delta = P[:, :kk].to(J.dtype) @ c.to(J.dtype)
        return delta, info

    def _scan_ranks(self, A, b, P, problem: Problem, k_max: int, cands):
        """Nested truncations of one randomized SVD, scored on validation data:
        ``(best rank, [{"rank", "val_rel_l2"}], interrupted, the best rank's coefficients)``."""
        v_in, v_tgt = problem.validation
        Jv = problem.jacobian_at(v_in)
        problem.stage("validation products", total=P.shape[1], done=product_counter(Jv))
        q0 = Jv.residual
        JvP = matmat_in_blocks(Jv, P, problem.products.batch_size)
        tgt = v_tgt.reshape(-1).to(q0.dtype)
        asked = cands
        cands = sorted({int(c) for c in cands if 0 < c <= k_max})
        if not cands:
            raise ValueError(
                f"Subspace.rank_candidates: expected ranks in [1, {k_max}], got {list(asked)}"
            )
        scan = []
        coefs = {}
        interrupted = False
        problem.stage("rank scan", total=len(cands), done=lambda: len(scan), unit="ranks")
        try:
            nested = NestedLstsq(A[:, : cands[-1]], b, self.rcond)
            for kc in cands:
                c = nested.solve(kc)
                pred = q0 + JvP[:, :kc] @ c
                err = float((pred - tgt).norm() / tgt.norm().clamp_min(1e-300))
                scan.append({"rank": kc, "val_rel_l2": err})
                coefs[kc] = c
        except KeyboardInterrupt:
            if not scan:
                raise
            interrupted = True  # keep the best rank scanned so far
            warnings.warn(
                f"Subspace: rank scan interrupted after {len(scan)} of {len(cands)} ranks; "
                "returning the best so far (info['interrupted'] is True)",
                RuntimeWarning,
                stacklevel=6,
            )
        best = min(scan, key=lambda r: r["val_rel_l2"])["rank"]
        return best, scan, interrupted, coefs[best]


def _capped(cands, k: int) -> tuple:
    """Candidate ranks up to ``k`` (``k`` itself added when all were larger)."""
    return tuple(sorted({c for c in cands if c <= k} or {k}))


def _embed(delta, idx, m):
    if idx is None:
        return delta
    out = delta.new_zeros(m)
    out[idx.to(delta.device)] = delta
    return out


def _or(value, key):
    return _REDUCED_DEFAULTS[key] if value is None else value


def _svd_products(method: Subspace, rank: int, shape) -> int:
    """Column products of its :func:`~lsr_scale.randomized_svd` (for the progress display)."""
    return 2 * (1 + method.power_iters) * min(rank + method.oversample, *shape)
