"""Preconditioner specifications: what to build, decided before the operator exists.

A specification is a small frozen dataclass that checks its own fields when it is constructed
and builds the preconditioner operator for a given ``A`` with :meth:`build`.
:class:`lsr_scale.Krylov` takes one (or a shorthand string) as ``preconditioner=``; the built
operators (:class:`NystromPreconditioner`, :class:`SketchPreconditioner`,
:class:`JacobiPreconditioner`) are what ``lsmr(..., M=...)`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_nonnegative_int, check_positive_int
from ._common import as_operator
from ._jacobi import JacobiPreconditioner
from ._nystrom import NystromPreconditioner
from ._sketch_precond import SketchPreconditioner

__all__ = [
    "Nystrom",
    "Sketch",
    "Jacobi",
    "Auto",
    "as_preconditioner",
    "default_nystrom_rank",
]

# Auto picks the sketch preconditioner for operators at least this many times taller than
# wide (a 4m-row sketch then saves work) and with at most this many columns (QR of s x m).
_TALL_RATIO = 8
_SKETCH_MAX_COLUMNS = 4096


def default_nystrom_rank(shape) -> int:
    """Default Nystrom rank for an ``(n, m)`` operator: ``min(300, min(n, m) // 2)``, at least 1."""
    n, m = shape
    return max(1, min(300, min(n, m) // 2))


@dataclass(frozen=True)
class Nystrom:
    """Randomized Nystrom preconditioner of ``A^T A + damp^2 I`` (Frangella-Tropp-Udell 2023).

    See :class:`NystromPreconditioner` for the operator it builds.

    Parameters
    ----------
    rank : int, optional
        Rank ``l`` of the approximation (default :func:`default_nystrom_rank`: 300, or half
        the smaller dimension).
    oversample : int
        Extra test vectors of the randomized SVD (``method="svd"``).
    method : {"svd", "nystrom"}
        ``"svd"``: from a randomized SVD of ``A`` (robust in float32); ``"nystrom"``: from the
        shifted Nystrom sketch of ``A^T A`` (cheaper, squares the condition number).
    power_iters : int
        Power iterations of the range finder.
    basis_dtype : torch.dtype, optional
        Store the ``m x l`` basis in this (lower) precision, e.g. ``torch.bfloat16``.
    floor : float, optional
        Keep only the directions with ``sigma_i >= floor * sigma_1``: below the noise floor
        of the products' precision a preconditioner amplifies rounding.
        :class:`lsr_scale.Krylov` sets it for float32 products (``precision="mixed"``).
    streamed : bool, optional
        Build the basis inside one ``m x (l + p)`` buffer of ``basis_dtype``
        (:func:`lsr_scale.randomized.lowrank_gram_streamed`) instead of holding the sketch
        and its SVD factor side by side in the working precision (two ``m x (l + p)``
        blocks). Default (``None``): streamed when ``basis_dtype`` is narrower than the
        operator's dtype and ``method="svd"`` without power iterations.
        :class:`lsr_scale.Krylov` stores the basis in the model's precision by default, so
        a float32 model solved in float64 gets the streamed build (a quarter of the memory).
    """

    rank: int | None = None
    oversample: int = 10
    method: str = "svd"
    power_iters: int = 0
    basis_dtype: torch.dtype | None = None
    floor: float | None = None
    streamed: bool | None = None

    name = "nystrom"

    def __post_init__(self):
        if self.rank is not None:
            check_positive_int(self.rank, "Nystrom.rank")
        check_nonnegative_int(self.oversample, "Nystrom.oversample")
        check_choice(self.method, ("svd", "nystrom"), "Nystrom.method")
        check_nonnegative_int(self.power_iters, "Nystrom.power_iters")
        if self.basis_dtype is not None and (
            not isinstance(self.basis_dtype, torch.dtype) or not self.basis_dtype.is_floating_point
        ):
            raise TypeError(
                f"Nystrom.basis_dtype: expected a floating torch.dtype or None, "
                f"got {self.basis_dtype!r}"
            )
        if self.floor is not None and not (0 <= self.floor < 1):
            raise ValueError(f"Nystrom.floor: expected a number in [0, 1), got {self.floor!r}")
        if self.streamed is not None and not isinstance(self.streamed, bool):
            raise TypeError(
                f"Nystrom.streamed: expected True, False or None, got {self.streamed!r}"
            )
        if self.streamed and (self.method != "svd" or self.power_iters):
            raise ValueError(
                "Nystrom.streamed: builds from one randomized SVD pass, expected method='svd' "
                f"and power_iters=0, got method={self.method!r}, power_iters={self.power_iters}"
            )

    def resolved_rank(self, shape) -> int:
        """The rank used for an operator of this shape."""
        return self.rank if self.rank is not None else default_nystrom_rank(shape)

    def is_streamed(self, dtype) -> bool:
        """Whether the build for an operator of ``dtype`` is streamed (see ``streamed``)."""
        if self.streamed is not None:
            return self.streamed
        narrow = self.basis_dtype is not None and (
            torch.finfo(self.basis_dtype).bits < torch.finfo(dtype).bits
        )
        return narrow and self.method == "svd" and not self.power_iters

    def build(
        self, A, *, damp: float = 0.0, generator=None, block_size=None
    ) -> NystromPreconditioner:
        """Build the preconditioner for ``min ||A x - b||^2 + damp^2 ||x||^2``, taking at most
        ``block_size`` columns per product with ``A`` (default: a block at once)."""
        A = as_operator(A)
        M = NystromPreconditioner(
            A,
            self.resolved_rank(A.shape),
            damp,
            generator=generator,
            oversample=self.oversample,
            method=self.method,
            power_iters=self.power_iters,
            basis_dtype=self.basis_dtype,
            streamed=self.is_streamed(A.dtype),
            block_size=block_size,
        )
        if self.floor:
            M.truncate(self.floor)
        return M


@dataclass(frozen=True)
class Sketch:
    """Sketch-and-precondition (Blendenpik / LSRN) for tall operators: ``S A = Q R``, ``M = R^-1``.

    See :class:`SketchPreconditioner` for the operator it builds. The damping of the problem
    does not enter the build.

    Parameters
    ----------
    sketch_size : int, optional
        Rows of the sketch (default ``4 m``).
    sketch : {"sparse_sign", "gaussian", "srht"}
        The embedding.
    truncate : bool
        A rank-deficient ``S A`` (``sigma_min(R) <= m eps sigma_max(R)``) is preconditioned
        on its numerical range (``True``, the default; LSMR then returns the solution on that
        range) instead of refused (``False``). Jacobians with columns that cannot move the
        output have one: an FNO's complex weights on the zero and Nyquist frequencies have
        imaginary parts that ``irfft`` ignores.
    floor : float, optional
        Keep only the directions with ``sigma_i(R) >= floor * sigma_1(R)`` (truncating as
        above): below the noise floor of the products' precision a preconditioner amplifies
        rounding. :class:`lsr_scale.Krylov` sets it for products narrower than its solve.
    """

    sketch_size: int | None = None
    sketch: str = "sparse_sign"
    truncate: bool = True
    floor: float | None = None

    name = "sketch"

    def __post_init__(self):
        if self.sketch_size is not None:
            check_positive_int(self.sketch_size, "Sketch.sketch_size")
        check_choice(self.sketch, ("sparse_sign", "gaussian", "srht"), "Sketch.sketch")
        if not isinstance(self.truncate, bool):
            raise TypeError(f"Sketch.truncate: expected True or False, got {self.truncate!r}")
        if self.floor is not None and not (0 <= self.floor < 1):
            raise ValueError(f"Sketch.floor: expected a number in [0, 1), got {self.floor!r}")

    def build(self, A, *, damp: float = 0.0, generator=None) -> SketchPreconditioner:
        """Build the preconditioner for ``A`` (``damp`` is accepted and not used)."""
        A = as_operator(A)
        tol = None
        if self.floor:  # not below the default m * eps
            tol = max(float(self.floor), A.shape[1] * torch.finfo(A.dtype).eps)
        return SketchPreconditioner(
            A, self.sketch_size, self.sketch, generator=generator,
            truncate=self.truncate or bool(self.floor), rank_tol=tol,
        )  # fmt: skip


@dataclass(frozen=True)
class Jacobi:
    """Column scaling ``M = diag(1 / sqrt(||A e_j||^2 + damp^2))``: the baseline.

    Parameters
    ----------
    method : {"auto", "exact", "hutchinson"}
        How the column norms are found (see :class:`JacobiPreconditioner`).
    num_samples : int
        Probe vectors of the estimate.
    """

    method: str = "auto"
    num_samples: int = 64

    name = "jacobi"

    def __post_init__(self):
        check_choice(self.method, ("auto", "exact", "hutchinson"), "Jacobi.method")
        check_positive_int(self.num_samples, "Jacobi.num_samples")

    def build(self, A, *, damp: float = 0.0, generator=None) -> JacobiPreconditioner:
        """Build the preconditioner for ``min ||A x - b||^2 + damp^2 ||x||^2``."""
        return JacobiPreconditioner(
            as_operator(A),
            damp,
            method=self.method,
            num_samples=self.num_samples,
            generator=generator,
        )


@dataclass(frozen=True)
class Auto:
    """Choose by shape: ``sketch`` for tall operators, ``nystrom`` otherwise.

    The sketch preconditioner is chosen when ``n >= 8 m`` and ``m <= 4096`` (its ``s x m``
    QR is then cheap and makes the iteration count independent of the conditioning);
    otherwise Nystrom. ``preconditioner="auto"`` means ``Auto()``.

    Parameters
    ----------
    nystrom : Nystrom
        What to build when Nystrom is chosen.
    sketch : Sketch
        What to build when the sketch is chosen.
    """

    nystrom: Nystrom = field(default_factory=Nystrom)
    sketch: Sketch = field(default_factory=Sketch)

    name = "auto"

    def __post_init__(self):
        if not isinstance(self.nystrom, Nystrom):
            raise TypeError(f"Auto.nystrom: expected a Nystrom, got {type(self.nystrom).__name__}")
        if not isinstance(self.sketch, Sketch):
            raise TypeError(f"Auto.sketch: expected a Sketch, got {type(self.sketch).__name__}")

    def choose(self, shape) -> Nystrom | Sketch:
        """The specification chosen for an ``(n, m)`` operator."""
        n, m = shape
        if n >= _TALL_RATIO * m and m <= _SKETCH_MAX_COLUMNS:
            return self.sketch
        return self.nystrom

    def build(self, A, *, damp: float = 0.0, generator=None):
        """Build the chosen preconditioner; its ``name`` says which."""
        A = as_operator(A)
        return self.choose(A.shape).build(A, damp=damp, generator=generator)


_SHORTHANDS = {"auto": Auto, "nystrom": Nystrom, "sketch": Sketch, "jacobi": Jacobi}
SPECS = (Nystrom, Sketch, Jacobi, Auto)


def as_preconditioner(value, what: str = "preconditioner"):
    """A specification from a shorthand: ``None``, a name, or a specification object.

    Examples
    --------
    >>> import lsr_scale as ls
    >>> ls.precond.as_preconditioner("nystrom").name
    'nystrom'
    >>> ls.precond.as_preconditioner(None) is None
    True
    """
    if value is None or isinstance(value, SPECS):
        return value
    if isinstance(value, str) and value in _SHORTHANDS:
        return _SHORTHANDS[value]()
    raise ValueError(
        f"{what}: expected None, one of {sorted(_SHORTHANDS)} or a specification "
        f"(ls.precond.Nystrom(...), Sketch(...), Jacobi(...), Auto(...)), got {value!r}"
    )
