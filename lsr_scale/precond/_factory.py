"""``make_preconditioner``: build a preconditioner by name (what ``refine`` calls)."""

from __future__ import annotations

from .._checks import check_choice
from ._common import as_operator
from ._jacobi import JacobiPreconditioner
from ._nystrom import NystromPreconditioner
from ._sketch_precond import SketchPreconditioner

__all__ = ["make_preconditioner", "PRECONDITIONERS", "DEFAULT_RANK"]

PRECONDITIONERS = ("auto", "nystrom", "sketch", "jacobi", None)
DEFAULT_RANK = 100
# "auto" picks the sketch preconditioner for operators at least this many times taller than
# wide (a 4m-row sketch then saves work) and with at most this many columns (QR of s x m).
_TALL_RATIO = 8
_SKETCH_MAX_COLUMNS = 4096


def choose_preconditioner(shape) -> str:
    """The name ``"auto"`` resolves to for an operator of this shape.

    ``"sketch"`` when ``n >= 8 m`` and ``m <= 4096`` (tall: sketch-and-precondition makes the
    iteration count independent of the conditioning for ``m`` products), else ``"nystrom"``.
    """
    n, m = shape
    if n >= _TALL_RATIO * m and m <= _SKETCH_MAX_COLUMNS:
        return "sketch"
    return "nystrom"


def make_preconditioner(name, A, *, rank=None, damp=0.0, generator=None, **kw):
    """Build the right preconditioner ``name`` for ``min ||A x - b||^2 + damp^2 ||x||^2``.

    Parameters
    ----------
    name : {"auto", "nystrom", "sketch", "jacobi", None}
        ``None`` returns ``None`` (no preconditioner). ``"auto"`` resolves with
        :func:`choose_preconditioner`; the result's ``name`` says what was built.
    A : LinearOperator (n x m)
    rank : int, optional
        Rank of the Nystrom preconditioner (default ``min(100, n, m)``); ignored by the others.
    damp : float
        Damping of the problem (used by Nystrom and Jacobi; the sketch preconditioner
        ignores it).
    generator : torch.Generator, optional
        Randomness for Nystrom and sketch.
    **kw
        Passed to the class (:class:`NystromPreconditioner`, :class:`SketchPreconditioner`
        or :class:`JacobiPreconditioner`).

    Returns
    -------
    Preconditioner or None
        With ``build_time``, ``build_matvecs``, ``build_rmatvecs`` and ``info()``.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> A = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> ls.precond.make_preconditioner("jacobi", A).name
    'jacobi'
    >>> ls.precond.make_preconditioner(None, A) is None
    True
    """
    check_choice(name, PRECONDITIONERS, "preconditioner")
    if name is None:
        return None
    A = as_operator(A)
    if name == "auto":
        name = choose_preconditioner(A.shape)
    if name == "nystrom":
        if rank is None:
            rank = min(DEFAULT_RANK, *A.shape)
        return NystromPreconditioner(A, rank, damp, generator=generator, **kw)
    if name == "sketch":
        return SketchPreconditioner(A, generator=generator, **kw)
    return JacobiPreconditioner(A, damp, **kw)
