"""Resumable LSQR/LSMR solves: the iteration state and the interrupt exception.

A :class:`SolverState` holds everything the recurrences need to continue (the Golub-Kahan
vectors, the iterate, every rotation and estimate scalar, the reported numbers, the history,
the product counts and the settings). The solvers build one only every ``checkpoint_every``
iterations (and at the end), by copying the vectors on the device: the iterations in between
are unchanged and free of host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import describe

__all__ = [
    "SolverState",
    "SolverInterrupted",
    "settings_of",
    "check_resume",
    "VECTORS",
    "SCALARS",
]

FORMAT = 1

# Settings that must be equal for a resumed solve to take the iterates of the saved one.
_MUST_MATCH = ("solver", "shape", "unknowns", "dtype", "damp", "x0", "M", "atol", "btol", "conlim")

# What each solver's state holds (the scalars in the order the solver packs them).
VECTORS = {"lsmr": ("u", "v", "y", "h", "hbar"), "lsqr": ("u", "v", "y", "w")}
SCALARS = {
    "lsmr": (
        "alpha alphabar zetabar rho rhobar cbar sbar betadd betad "
        "rhodold tautildeold thetatilde zeta d normA2 maxrbar minrbar"
    ).split(),
    "lsqr": "alfa rhobar phibar anorm ddnorm res2 xxnorm z cs2 sn2".split(),
}
_RECORD = ("normr", "normar", "norma", "conda", "normx", "done", "istop", "itn")


@dataclass
class SolverState:
    """The state of an LSQR/LSMR iteration: what ``resume=`` needs to continue it exactly.

    Passed to ``checkpoint(state)`` by :func:`lsr_scale.lsmr` and :func:`lsr_scale.lsqr`, and
    carried by :class:`SolverInterrupted`. All tensors are copies on the solver's device;
    :meth:`to_dict` gives a plain dict of tensors, numbers and strings that
    ``torch.save`` / ``torch.load(..., weights_only=True)`` round-trip, and ``resume=`` takes
    either form.

    Attributes
    ----------
    solver : str
        ``"lsmr"`` or ``"lsqr"``.
    itn : int
        Iterations done (the loop counter the resumed solve continues from).
    vectors : dict of str to torch.Tensor
        The Golub-Kahan vectors ``u`` and ``v``, the iterate ``y`` (``x`` itself without a
        preconditioner) and the search directions (``h``, ``hbar`` for LSMR; ``w`` for LSQR).
    scalars : dict of str to torch.Tensor
        The recurrences' 0-d tensors (rotations, ``||r||``, ``||A||`` and ``cond(A)``
        estimates) and ``normb``.
    record : dict of str to torch.Tensor
        The reported numbers (``normr``, ``normar``, ``norma``, ``conda``, ``normx``) and the
        stopping flag, code and iteration (``done``, ``istop``, ``itn``) as 0-d tensors.
    history : dict of str to torch.Tensor
        ``{"normr": (itn,), "normar": (itn,)}``: the per-iteration estimates so far.
    counts : dict of str to int
        ``num_matvecs`` and ``num_rmatvecs``: products with ``A`` made so far.
    settings : dict
        ``solver``, ``shape``, ``unknowns`` (the length of ``y``), ``dtype``, ``damp``,
        ``atol``, ``btol``, ``conlim``, ``maxiter``, and whether ``x0`` and ``M`` were given.
        A resumed solve must have the same settings, except ``maxiter``.

    Examples
    --------
    >>> import io, torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(50, 20, generator=g, dtype=torch.float64)
    >>> b = torch.randn(50, generator=g, dtype=torch.float64)
    >>> files = []
    >>> def save(state):
    ...     f = io.BytesIO()
    ...     torch.save(state.to_dict(), f)
    ...     files.append(f)
    >>> full = ls.lsmr(A, b, atol=0, btol=0, maxiter=12, checkpoint=save, checkpoint_every=5)
    >>> _ = files[0].seek(0)
    >>> state = torch.load(files[0], weights_only=True)
    >>> state["itn"], len(files)
    (5, 3)
    >>> again = ls.lsmr(A, b, atol=0, btol=0, maxiter=12, resume=state)
    >>> torch.equal(again.x, full.x), again.itn
    (True, 12)
    """

    solver: str
    itn: int
    vectors: dict
    scalars: dict
    record: dict
    history: dict
    counts: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A plain dict (tensors, numbers, strings, lists) for ``torch.save``."""
        return {
            "format": FORMAT,
            "solver": self.solver,
            "itn": int(self.itn),
            "vectors": dict(self.vectors),
            "scalars": dict(self.scalars),
            "record": dict(self.record),
            "history": dict(self.history),
            "counts": dict(self.counts),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data) -> SolverState:
        """The state from :meth:`to_dict`'s dict (e.g. after ``torch.load``)."""
        if not isinstance(data, dict):
            raise TypeError(f"resume: expected a SolverState or a dict, got {describe(data)}")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ValueError(f"resume: expected a solver state of format {FORMAT}, got {fmt!r}")
        keys = ("solver", "itn", "vectors", "scalars", "record", "history", "counts", "settings")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"resume: expected the keys {list(keys)}, got {sorted(data)}")
        return cls(**{k: data[k] for k in keys})


class SolverInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt during an LSQR/LSMR iteration, carrying the work done so far.

    It is a :class:`KeyboardInterrupt`, so Ctrl-C still stops a program that does not catch
    it; code that does catch it gets the latest iterate.

    Attributes
    ----------
    result : SolverResult
        The latest iterate ``x`` with ``interrupted=True``. ``itn`` and the estimates are
        those of the last completed iteration; ``istop`` is the code of a stopping test that
        had already fired (:class:`~lsr_scale.StopReason`), else 7 (stopped before
        convergence, as at ``maxiter``).
    state : SolverState or None
        The state after iteration ``result.itn`` when the interrupt came between iterations
        (from ``callback`` or ``checkpoint``), so ``resume=state`` continues exactly. None
        when it came in the middle of an iteration (the vectors are then half updated):
        resume from the last checkpoint instead.
    """

    def __init__(self, result, state: SolverState | None = None) -> None:
        super().__init__(f"interrupted after {result.itn} iterations")
        self.result = result
        self.state = state

    def __reduce__(self):
        return (type(self), (self.result, self.state))


def settings_of(solver: str, A, ny: int, damp, atol, btol, conlim, maxiter, x0, M) -> dict:
    """The settings a :class:`SolverState` records (plain types only)."""
    return {
        "solver": solver,
        "shape": [int(A.shape[0]), int(A.shape[1])],
        "unknowns": int(ny),
        "dtype": str(A.dtype).removeprefix("torch."),
        "damp": float(damp),
        "atol": float(atol),
        "btol": float(btol),
        "conlim": float(conlim),
        "maxiter": int(maxiter),
        "x0": x0 is not None,
        "M": M is not None,
    }


def check_resume(resume, settings: dict, device) -> SolverState:
    """Validate ``resume=`` against this call's ``settings``; return a state on ``device``.

    The tensors are moved (not copied when already there); the solver copies the vectors it
    updates in place, so the given state can be resumed again.
    """
    state = resume if isinstance(resume, SolverState) else SolverState.from_dict(resume)
    saved = state.settings
    for key in _MUST_MATCH:
        now, then = settings[key], saved.get(key)
        if now != then:
            exc = TypeError if key == "dtype" else ValueError
            raise exc(f"{key}: expected {then!r} (as in the resumed state), got {now!r}")
    if settings["maxiter"] < state.itn:
        raise ValueError(
            f"maxiter: expected at least {state.itn} (the iterations of the resumed state), "
            f"got {settings['maxiter']}"
        )
    solver = settings["solver"]
    for what, group, keys in (
        ("vectors", state.vectors, VECTORS[solver]),
        ("scalars", state.scalars, (*SCALARS[solver], "normb")),
        ("record", state.record, _RECORD),
        ("history", state.history, ("normr", "normar")),
    ):
        if not isinstance(group, dict) or set(group) != set(keys):
            got = sorted(group) if isinstance(group, dict) else describe(group)
            raise ValueError(f"resume: expected {what} {sorted(keys)} in the state, got {got}")
    dtype = getattr(torch, settings["dtype"])

    def move(group: dict) -> dict:
        out = {}
        for k, t in group.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"resume: expected tensors in the state, got {describe(t)} at {k!r}"
                )
            out[k] = t.to(device)
        return out

    vectors, scalars, record = move(state.vectors), move(state.scalars), move(state.record)
    for k, t in {**vectors, **scalars}.items():
        if t.dtype != dtype:
            raise TypeError(f"resume: expected {k} of dtype {dtype}, got {t.dtype}")
    return SolverState(
        solver=state.solver,
        itn=int(state.itn),
        vectors=vectors,
        scalars=scalars,
        record=record,
        history=move(state.history),
        counts={k: int(v) for k, v in state.counts.items()},
        settings=dict(saved),
    )
