"""Setup shared by :func:`lsmr` and :func:`lsqr`: argument checks, ``b``/``x0`` handling,
preconditioner and damping wrapping, the branch-free scalar helpers both recurrences use, and
the bookkeeping of results, checkpoints and interrupts.

Everything a Krylov iteration touches per step stays on the operator's device: the helpers
here work on 0-d tensors and never read a value back to the host.

Norms of vectors in the operator's output space (``b``, ``u``) go through the operator's
``row_norm`` (:class:`~lsr_scale.LinearOperator`): ``torch.linalg.vector_norm`` itself, unless
the rows are sharded over processes (:mod:`lsr_scale.distributed`), where it is the global
norm. Vectors in the input space (``v``, ``x``) are replicated there and normed locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import (
    check_callable,
    check_nonnegative_int,
    check_operator,
    check_positive_int,
    check_tolerance,
    check_vector,
)
from ..operators import LinearOperator, aslinearoperator
from ._state import SolverInterrupted, SolverState, check_resume, settings_of

__all__ = [
    "Problem",
    "prepare",
    "sym_ortho",
    "safe_div",
    "stop_code",
    "finish",
    "bidiag_start",
    "bidiag_step",
    "Record",
    "save_checkpoint",
]


# ---------------------------------------------------------------------------- scalar helpers
def safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` elementwise, with 0 where ``b == 0`` (no host sync, no inf/nan)."""
    # the discarded branch may hold inf/nan; torch.where never propagates it
    return torch.where(b != 0, a / b, 0.0)


def sym_ortho(a: torch.Tensor, b: torch.Tensor):
    """Givens rotation ``(c, s, r)`` with ``[c s; -s c] [a; b] = [r; 0]``, ``r = hypot(a, b)``.

    Branch-free: ``c = a / r``, ``s = b / r`` and ``c = s = r = 0`` when ``a = b = 0`` (the
    sign convention of Paige-Saunders' ``sym_ortho``: ``r >= 0``).
    """
    r = torch.hypot(a, b)
    rs = torch.where(r == 0, 1.0, r)
    return a / rs, b / rs, r


def stop_code(itn, maxiter, test1, rtol, test2, atol, test3, ctol, t1) -> torch.Tensor:
    """scipy's istop for one iteration as a 0-d int64 tensor (0: keep going).

    Later tests override earlier ones, so the precedence is 1 > 2 > 3 > 4 > 5 > 6 > 7.
    """
    # torch.full launches a fill kernel: unlike torch.tensor, no host-to-device copy.
    code = torch.full((), 7 if itn >= maxiter else 0, dtype=torch.int64, device=test1.device)
    one = 1.0
    for value, cond in (
        (6, one + test3 <= one),
        (5, one + test2 <= one),
        (4, one + t1 <= one),
        (3, test3 <= ctol),
        (2, test2 <= atol),
        (1, test1 <= rtol),
    ):
        code = torch.where(cond, value, code)
    return code


# ---------------------------------------------------------------------------- operators
class _DampedStack(LinearOperator):
    """``[A; damp I]`` (shape ``(m + n, n)``), used to keep ``damp`` on ``x`` under ``M``.

    With ``A``'s rows sharded over processes, a vector of the stack holds this process's rows
    of ``A`` and then the ``n`` damping rows, which every process holds (replicated): its
    norm counts those once.
    """

    def __init__(self, A: LinearOperator, damp: float) -> None:
        m, n = A.shape
        super().__init__((m + n, n), A.dtype, A.device)
        self.A, self.damp = A, float(damp)
        self._m = A.local_shape[0]  # the rows of A in a (local) vector of the stack

    @property
    def row_sharded(self) -> bool:
        return self.A.row_sharded

    @property
    def local_shape(self):
        return (self._m + self.shape[1], self.shape[1])

    def row_norm(self, u):
        if not self.A.row_sharded:
            return torch.linalg.vector_norm(u)
        m = self._m
        return torch.hypot(self.A.row_norm(u[:m]), torch.linalg.vector_norm(u[m:]))

    def row_dot(self, u, w):
        if not self.A.row_sharded:
            return torch.dot(u, w)
        m = self._m
        return self.A.row_dot(u[:m], w[:m]) + torch.dot(u[m:], w[m:])

    def row_reduce(self, partial):
        if self.A.row_sharded:  # a partial sum over all rows cannot be split again
            raise NotImplementedError("row_reduce of a damped stack of a row-sharded operator")
        return partial

    def row_orth(self, Y):
        if self.A.row_sharded:
            raise NotImplementedError("row_orth of a damped stack of a row-sharded operator")
        return torch.linalg.qr(Y, mode="reduced").Q

    def _matvec(self, x):
        return torch.cat([self.A.matvec(x), self.damp * x])

    def _rmatvec(self, y):
        return self.A.rmatvec(y[: self._m]) + self.damp * y[self._m :]

    def _matmat(self, X):
        return torch.cat([self.A.matmat(X), self.damp * X])

    def _rmatmat(self, Y):
        return self.A.rmatmat(Y[: self._m]) + self.damp * Y[self._m :]


@dataclass
class Problem:
    """A validated least-squares problem, reduced to ``min ||op y - u||`` (+ ``damp``)."""

    A: LinearOperator  # the user's operator (counted)
    op: LinearOperator  # what the recurrences act on: A, A M, or [A; damp I] M
    u: torch.Tensor  # initial residual in op's output space (a fresh tensor)
    y: torch.Tensor  # initial iterate in op's input space (a fresh tensor)
    normb: torch.Tensor  # ||b|| as a 0-d device tensor
    damp: float  # damp the recurrences see (0 when folded into op)
    atol: float
    btol: float
    ctol: float
    maxiter: int
    check_every: int
    x0: torch.Tensor | None
    M: LinearOperator | None
    callback: object
    counts0: tuple[int, int]
    settings: dict
    checkpoint: object = None
    checkpoint_every: int | None = None
    state: SolverState | None = None  # the validated resume= state

    def to_x(self, y: torch.Tensor) -> torch.Tensor:
        """Map an iterate of the reduced problem to the solution ``x``."""
        if self.M is None:
            return y
        x = self.M.matvec(y)
        return x + self.x0 if self.x0 is not None else x

    def counts(self) -> tuple[int, int]:
        return (
            self.A.num_matvecs - self.counts0[0],
            self.A.num_rmatvecs - self.counts0[1],
        )


def prepare(
    A,
    b,
    damp,
    atol,
    btol,
    conlim,
    maxiter,
    x0,
    M,
    callback,
    check_every,
    *,
    solver: str,
    checkpoint=None,
    checkpoint_every=None,
    resume=None,
) -> Problem:
    """Validate the arguments of ``lsmr``/``lsqr`` and build the reduced problem.

    ``solver`` ("lsmr" or "lsqr") selects scipy's default ``maxiter`` rule. A ``b`` of shape
    ``(m, 1)`` is taken as ``b[:, 0]`` (scipy squeezes it); no other shape is converted.
    With ``resume``, the starting vectors come from the state instead of ``b`` and ``x0``.
    """
    A = aslinearoperator(A)
    m, n = A.shape
    # b holds the rows of A this process has (all of them unless A is row-sharded)
    mb = A.local_shape[0]
    if isinstance(b, torch.Tensor) and b.shape == (mb, 1):
        b = b[:, 0]
    note = " (A.shape[0]; (m, 1) is also taken)" if mb == m else " (A.local_shape[0])"
    check_vector(b, mb, A.dtype, A.device, "b", note=note, like="A")
    b = b.detach()
    damp = check_tolerance(damp, "damp")
    atol = check_tolerance(atol, "atol")
    btol = check_tolerance(btol, "btol")
    conlim = check_tolerance(conlim, "conlim", allow_zero=False, allow_inf=True)
    if x0 is not None:
        check_vector(x0, n, A.dtype, A.device, "x0", note=" (A.shape[1])", like="A")
        x0 = x0.detach()
    check_callable(callback, "callback")
    if check_every is None:
        check_every = 1 if A.device.type == "cpu" else 10
    check_every = check_positive_int(check_every, "check_every")
    check_callable(checkpoint, "checkpoint")
    if checkpoint is not None:
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    elif checkpoint_every is not None:
        raise ValueError(
            f"checkpoint_every: expected None without checkpoint=, got {checkpoint_every!r}"
        )

    if M is not None:
        M = aslinearoperator(M)
        check_operator(M, (n, None), A.dtype, A.device, "M", note=" (rows = A.shape[1])")
    ny = n if M is None else M.shape[1]

    if maxiter is None:
        # scipy's defaults: lsmr min(m, n), lsqr 2 n, with n the unknowns actually solved for.
        maxiter = min(m, ny) if solver == "lsmr" else 2 * ny
    else:
        maxiter = check_nonnegative_int(maxiter, "maxiter")
    settings = settings_of(solver, A, ny, damp, atol, btol, conlim, maxiter, x0, M)
    state = None if resume is None else check_resume(resume, settings, A.device)

    counts0 = (A.num_matvecs, A.num_rmatvecs)
    normb = A.row_norm(b)
    if state is not None:
        if not torch.equal(normb, state.scalars["normb"]):
            raise ValueError(
                f"b: expected the right-hand side of the resumed solve (||b|| = "
                f"{float(state.scalars['normb']):.6g}), got ||b|| = {float(normb):.6g}"
            )
        # Products made before the checkpoint count too.
        counts0 = (
            counts0[0] - state.counts.get("num_matvecs", 0),
            counts0[1] - state.counts.get("num_rmatvecs", 0),
        )
        u, y = state.vectors["u"].clone(), state.vectors["y"].clone()
    else:
        u = b.clone() if x0 is None else b - A.matvec(x0).detach()
        y = None

    if M is None:
        op, damp_eff = A, damp
        if y is None:
            y = x0.clone() if x0 is not None else torch.zeros(n, dtype=A.dtype, device=A.device)
    else:
        if y is None:
            y = torch.zeros(ny, dtype=A.dtype, device=A.device)
        if damp > 0:
            # damp regularizes x (the correction x - x0 with x0), not y: fold it into the op.
            op, damp_eff = _DampedStack(A, damp) @ M, 0.0
            if state is None:
                u = torch.cat([u, torch.zeros(n, dtype=A.dtype, device=A.device)])
        else:
            op, damp_eff = A @ M, 0.0
    if u.shape != (op.local_shape[0],) or y.shape != (ny,):
        raise ValueError(
            f"resume: expected vectors u of shape ({op.local_shape[0]},) and y of shape ({ny},), "
            f"got {tuple(u.shape)} and {tuple(y.shape)}"
        )

    return Problem(
        A=A,
        op=op,
        u=u,
        y=y,
        normb=normb,
        damp=damp_eff,
        atol=atol,
        btol=btol,
        ctol=1.0 / conlim,
        maxiter=maxiter,
        check_every=check_every,
        x0=x0,
        M=M,
        callback=callback,
        counts0=counts0,
        settings=settings,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        state=state,
    )


def finish(
    prob: Problem,
    y,
    istop,
    itn,
    normr,
    normar,
    norma,
    conda,
    normx,
    hist_r=None,
    hist_ar=None,
    *,
    interrupted=False,
):
    """Build the :class:`SolverResult`: one host transfer for all reported scalars.

    ``hist_r`` and ``hist_ar`` are the per-iteration estimates (tensors of at least ``itn``
    entries, or None for none).
    """
    from ._result import SolverResult, StopReason

    dev = prob.normb.device
    vals = torch.stack(
        [
            torch.as_tensor(v, device=dev).to(torch.float64)
            for v in (istop, itn, normr, normar, norma, conda, normx)
        ]
    ).tolist()
    istop_i, itn_i = int(vals[0]), int(vals[1])
    if hist_r is not None:
        history = {"normr": hist_r[:itn_i].cpu(), "normar": hist_ar[:itn_i].cpu()}
    else:
        empty = torch.zeros(0, dtype=prob.A.dtype)
        history = {"normr": empty, "normar": empty.clone()}
    x = prob.to_x(y)
    nmv, nrmv = prob.counts()
    return SolverResult(
        x=x,
        istop=StopReason(istop_i),
        itn=itn_i,
        normr=vals[2],
        normar=vals[3],
        norma=vals[4],
        conda=vals[5],
        normx=vals[6],
        num_matvecs=nmv,
        num_rmatvecs=nrmv,
        history=history,
        interrupted=interrupted,
    )


# ---------------------------------------------------------------------------- LSQR/LSMR frame
def bidiag_start(prob: Problem):
    """First Golub-Kahan step of LSQR and LSMR: ``beta u = u``, ``alpha v = op^T u``.

    Returns ``(beta, v, alpha, trivial)``. ``trivial`` (one host read) says that the solve
    ends before the first iteration (scipy's early returns): ``b = 0`` (``x`` is then zeroed
    and ``x0`` dropped), ``b - A x0 = 0`` (``v`` is None and ``alpha`` is 0) or
    ``A^T (b - A x0) = 0``.
    """
    u, x = prob.u, prob.y
    norm = torch.linalg.vector_norm
    normb = prob.normb
    beta = prob.op.row_norm(u)
    if float(normb) == 0.0 or float(beta) == 0.0:
        if float(normb) == 0.0:
            x.zero_()
            prob.x0 = None
        return beta, None, torch.zeros_like(beta), True
    u.mul_(1.0 / beta)
    v = prob.op.rmatvec(u).detach()
    alpha = norm(v)
    v.mul_(safe_div(torch.ones_like(alpha), alpha))
    return beta, v, alpha, float(alpha) == 0.0


def bidiag_step(op, u, v, alpha, one):
    """One Golub-Kahan step in place: ``beta u = op v - alpha u``, ``alpha v = op^T u - beta v``.

    Returns the new ``(beta, alpha)`` (0-d device tensors; no host sync).
    """
    norm = torch.linalg.vector_norm
    u.mul_(-alpha).add_(op.matvec(v).detach())
    beta = op.row_norm(u)  # u: output space (sharded with A's rows); v: input space
    u.mul_(safe_div(one, beta))
    v.mul_(-beta).add_(op.rmatvec(u).detach())
    alpha = norm(v)
    v.mul_(safe_div(one, alpha))
    return beta, alpha


_REPORTED = ("normr", "normar", "norma", "conda", "normx")


class Record:
    """LSQR's and LSMR's reported numbers, frozen on the device at the iteration whose
    stopping test fired, with the per-iteration history, the callback, the host check, and
    the states for checkpoints and interrupts.

    ``completed`` (a host int) is the last iteration whose numbers are recorded: an
    interrupt that finds ``completed`` equal to the loop counter came between iterations.
    """

    def __init__(self, prob: Problem, normr, normar, norma, conda, normx) -> None:
        dev = prob.u.device
        self.prob = prob
        self.hist_r, self.hist_ar = [], []
        self.finished = False  # a resumed state that needs no more iterations
        state = prob.state
        if state is None:
            self.vals = (normr, normar, norma, conda, normx)
            self.done = torch.tensor(False, device=dev)
            self.istop = torch.tensor(7, dtype=torch.int64, device=dev)
            self.itn = torch.tensor(prob.maxiter, dtype=torch.int64, device=dev)
            empty = torch.zeros(0, dtype=prob.u.dtype, device=dev)
            self.hist = (empty, empty)
            self.completed = 0
            return
        r = state.record
        self.vals = tuple(r[k] for k in _REPORTED)
        self.done, self.istop, self.itn = r["done"], r["istop"], r["itn"]
        self.hist = (state.history["normr"], state.history["normar"])
        self.completed = state.itn
        # A solve that stopped only at its maxiter goes on when this call's maxiter is larger
        # (the flag is all that differs from a solve that was given the larger one); one
        # that stopped on a test is finished (the iterations a check_every > 1 would still
        # run change nothing but the product counts).
        if bool(self.done):
            if state.itn < prob.maxiter and int(self.istop) == 7:
                self.done = torch.zeros_like(self.done)
            else:
                self.finished = True

    def update(self, itn: int, code, x, normr, normar, norma, conda, normx) -> bool:
        """Record iteration ``itn`` (values ignored once done); True when the loop should end."""
        done, prob = self.done, self.prob
        new = (normr, normar, norma, conda, normx)
        self.vals = tuple(torch.where(done, old, v) for old, v in zip(self.vals, new))
        self.istop = torch.where(done, self.istop, code)
        self.itn = torch.where(done, self.itn, torch.full_like(self.itn, itn))
        self.done = done | (code > 0)
        self.hist_r.append(self.vals[0])
        self.hist_ar.append(self.vals[1])
        self.completed = itn
        every = getattr(prob.callback, "callback_every", 1)
        if prob.callback is not None and itn % every == 0:
            prob.callback(prob.to_x(x))
        return itn % prob.check_every == 0 and bool(self.done)

    def history(self):
        """The per-iteration ``(normr, normar)`` so far as two tensors (on the device)."""
        if self.hist_r:
            self.hist = (
                torch.cat([self.hist[0], torch.stack(self.hist_r)]),
                torch.cat([self.hist[1], torch.stack(self.hist_ar)]),
            )
            self.hist_r, self.hist_ar = [], []
        return self.hist

    def result(self, x, itn: int, *, interrupted: bool = False):
        """The :class:`SolverResult` after ``itn`` iterations.

        ``itn = 0``: no iteration ran, scipy's ``istop = 0`` for ``maxiter = 0`` (7 when
        interrupted). An interrupted result reports 7 unless a stopping test had fired.
        """
        if itn == 0:
            istop, itn_rec = (7 if interrupted else 0), 0
        else:
            istop = torch.where(self.done, self.istop, 7) if interrupted else self.istop
            itn_rec = self.itn
        hist_r, hist_ar = self.history()
        return finish(
            self.prob, x, istop, itn_rec, *self.vals, hist_r, hist_ar, interrupted=interrupted
        )

    def state(self, itn: int, vectors: dict, scalars: dict) -> SolverState:
        """The :class:`SolverState` after iteration ``itn`` (vectors copied on the device)."""
        prob = self.prob
        hist_r, hist_ar = self.history()
        record = dict(zip(_REPORTED, self.vals))
        record.update(done=self.done, istop=self.istop, itn=self.itn)
        nmv, nrmv = prob.counts()
        return SolverState(
            solver=prob.settings["solver"],
            itn=itn,
            vectors={k: t.clone() for k, t in vectors.items()},
            scalars={**scalars, "normb": prob.normb},
            record=record,
            history={"normr": hist_r, "normar": hist_ar},
            counts={"num_matvecs": nmv, "num_rmatvecs": nrmv},
            settings=dict(prob.settings),
        )

    def interrupted(self, x, itn: int, snapshot) -> SolverInterrupted:
        """The exception for a KeyboardInterrupt met with the loop counter at ``itn``.

        ``snapshot()`` builds the state; it is taken only when the interrupt came between
        iterations (mid-iteration, the vectors are half updated).
        """
        state = snapshot() if self.completed == itn else None
        return SolverInterrupted(self.result(x, self.completed, interrupted=True), state)


def save_checkpoint(prob: Problem, itn: int, saved: int, snapshot, *, final=False) -> int:
    """Call ``prob.checkpoint(snapshot())`` after iteration ``itn`` when due: every
    ``checkpoint_every`` iterations, and at the end (``final``) unless just saved. Returns
    the iteration of the latest checkpoint."""
    every = prob.checkpoint_every
    if every is None or itn == saved or (not final and itn % every):
        return saved
    prob.checkpoint(snapshot())
    return itn
