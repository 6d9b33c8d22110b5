"""Right preconditioners for matrix-free least squares (usable as ``M=`` in ``lsmr``/``lsqr``).

Each is a square :class:`~lsr_scale.LinearOperator` ``M`` (``m x m`` for ``A`` of shape
``(n, m)``): the solver works on ``A M`` and returns ``x = M y``. Each records its
``build_time`` and the products with ``A`` its build used (``build_matvecs``,
``build_rmatvecs``).

* :class:`NystromPreconditioner`: randomized low-rank approximation of ``A^T A`` (from a
  randomized SVD of ``A`` or a shifted Nystrom sketch), the general-purpose choice for
  ill-conditioned Jacobians (Frangella-Tropp-Udell 2023).
* :class:`SketchPreconditioner`: sketch-and-precondition (Blendenpik / LSRN) for tall operators.
* :class:`JacobiPreconditioner`: column scaling, the baseline.

What to build is said with a *specification* (:class:`Nystrom`, :class:`Sketch`,
:class:`Jacobi`, or :class:`Auto`, which chooses by shape): a frozen dataclass that checks its
fields when constructed and builds the operator with ``spec.build(A, damp=..., generator=...)``.
``lsr_scale.Krylov(preconditioner=...)`` takes one, or its name as a shorthand.
"""

from ._common import LowRankOperator, Preconditioner
from ._jacobi import JacobiPreconditioner, column_norms
from ._nystrom import NystromPreconditioner, lowrank_gram
from ._sketch_precond import SketchPreconditioner, sketch_operator
from ._specs import Auto, Jacobi, Nystrom, Sketch, as_preconditioner, default_nystrom_rank

__all__ = [
    "NystromPreconditioner",
    "SketchPreconditioner",
    "JacobiPreconditioner",
    "Nystrom",
    "Sketch",
    "Jacobi",
    "Auto",
    "as_preconditioner",
    "default_nystrom_rank",
    "Preconditioner",
    "LowRankOperator",
    "lowrank_gram",
    "sketch_operator",
    "column_norms",
]
