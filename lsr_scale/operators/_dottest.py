"""The dot test ``<A u, v> = <u, A^T v>``, measured against the size of its terms.

Shared by :func:`lsr_scale.testing.dottest` (users checking an operator) and the product
self-check of :class:`~lsr_scale.JacobianOperator`.

The error of a computed ``A u`` is rounding relative to the terms summed into it, not to
``A u`` itself: for an operator whose terms cancel (``A @ B - AB``, zero in exact arithmetic),
``||A u||`` is itself rounding, and a test relative to it rejects a correct operator. So the
scale here is ``|| T(|u|) || ||v|| + ||u|| || T'(|v|) ||``, with ``T`` and ``T'`` the
operator's :meth:`~lsr_scale.LinearOperator.term_matvec` and ``term_rmatvec``: ``|M| |u|``
for a dense matrix, combined through sums, products and multiples, and ``|A |u||`` where
nothing finer is known. It is never smaller than the computed
``||A u|| ||v|| + ||u|| ||A^T v||``.
"""

from __future__ import annotations

import torch

__all__ = ["dot_test_error"]


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.double()))


def dot_test_error(A, u, v, Au=None, Atv=None, *, terms=True) -> tuple[float, float]:
    """``(|<A u, v> - <u, A^T v>|, scale)``: the dot-test error and the size of its terms.

    Parameters
    ----------
    A : LinearOperator
    u, v : torch.Tensor
        Vectors of ``A``'s input and output space (``A.dtype``, ``A.device``).
    Au, Atv : torch.Tensor, optional
        ``A @ u`` and ``A.T @ v`` when already computed.
    terms : bool or (torch.Tensor, torch.Tensor)
        Measure against the operator's term sizes: ``True`` computes them (two more products
        for an operator without finer knowledge), a pair passes them in when already computed
        (``A.term_matvec(u)``, ``A.term_rmatvec(v)``); ``False``: against the computed
        products only (no products added).

    Returns
    -------
    (float, float)
        The error and the scale; a correct operator has ``error <= c eps scale`` for a small
        ``c`` (a few hundred covers deep networks in float32).
    """
    Au = A.matvec(u) if Au is None else Au
    Atv = A.rmatvec(v) if Atv is None else Atv
    lhs = float(A.row_dot(Au.double(), v.double()))
    rhs = float(torch.dot(u.double(), Atv.double()))
    nu, nv = _norm(u), float(A.row_norm(v.double()))
    scale = float(A.row_norm(Au.double())) * nv + nu * _norm(Atv)
    if terms is not False:
        Tu, Tv = (A.term_matvec(u), A.term_rmatvec(v)) if terms is True else terms
        scale = max(scale, float(A.row_norm(Tu.double())) * nv + nu * _norm(Tv))
    return abs(lhs - rhs), scale
