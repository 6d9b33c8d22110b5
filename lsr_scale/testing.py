"""Checks users can run on their own operators.

>>> import torch, lsr_scale as ls
>>> from lsr_scale.testing import dottest
>>> A = ls.aslinearoperator(torch.randn(5, 3, dtype=torch.float64,
...                                     generator=torch.Generator().manual_seed(0)))
>>> dottest(A)
True
"""

from __future__ import annotations

import torch

from .operators import LinearOperator, aslinearoperator
from .randomized import gaussian, resolve_generator

__all__ = ["dottest"]


def dottest(
    A,
    *,
    ntrials: int = 3,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
    raise_error: bool = True,
) -> bool:
    """Check that ``A`` and its transpose agree: ``<A u, v> == <u, A^T v>``.

    Also checks ``matmat``/``rmatmat`` against column-by-column ``matvec``/``rmatvec``.

    Parameters
    ----------
    A : LinearOperator or anything :func:`lsr_scale.aslinearoperator` accepts.
    ntrials : int
        Number of random (u, v) pairs.
    rtol : float, optional
        Relative tolerance; default ``1e-10`` in float64 and ``1e-4`` in lower precision.
    generator : torch.Generator, optional
        Source of the random vectors (drawn in float64 on its device, then moved to
        ``A.device``); None: torch's global RNG, like every ``generator`` in the package.
    raise_error : bool
        Raise ``AssertionError`` on failure (default) instead of returning False.

    Returns
    -------
    bool
        True when every check passes.

    Notes
    -----
    The test is scale-aware: the inner products are compared relative to
    ``||A u|| ||v||``, so an operator with large entries is not penalised.
    """
    A = aslinearoperator(A)
    if not isinstance(A, LinearOperator):  # pragma: no cover - aslinearoperator guarantees it
        raise TypeError("A: expected a LinearOperator")
    if rtol is None:
        rtol = 1e-10 if A.dtype == torch.float64 else 1e-4
    gen = resolve_generator(generator)
    m, n = A.shape
    for _ in range(ntrials):
        u = gaussian(n, 2, gen, dtype=A.dtype, device=A.device, draw_dtype=torch.float64)
        v = gaussian(m, 2, gen, dtype=A.dtype, device=A.device, draw_dtype=torch.float64)
        Au = A.matvec(u[:, 0])
        Atv = A.rmatvec(v[:, 0])
        lhs = float(torch.dot(Au.double(), v[:, 0].double()))
        rhs = float(torch.dot(u[:, 0].double(), Atv.double()))
        scale = float(Au.double().norm() * v[:, 0].double().norm()) + float(
            u[:, 0].double().norm() * Atv.double().norm()
        )
        ok = abs(lhs - rhs) <= rtol * max(scale, torch.finfo(A.dtype).tiny)
        AU = A.matmat(u)
        AtV = A.rmatmat(v)
        ok_mm = bool(
            torch.allclose(AU[:, 0], Au, rtol=rtol * 10, atol=rtol * 10 * float(Au.abs().max()))
        ) and bool(
            torch.allclose(AtV[:, 0], Atv, rtol=rtol * 10, atol=rtol * 10 * float(Atv.abs().max()))
        )
        if not (ok and ok_mm):
            if raise_error:
                raise AssertionError(
                    f"dottest failed for {A!r}: <Au,v>={lhs:.6e}, <u,A^T v>={rhs:.6e} "
                    f"(scale {scale:.3e}, rtol {rtol:g}); matmat consistent: {ok_mm}"
                )
            return False
    return True
