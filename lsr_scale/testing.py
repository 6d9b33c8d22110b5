"""Checks users can run on their own operators, and on their model's products.

"Check your model's products": ``dottest(ls.JacobianOperator.from_module(model, x, y))``
checks that the JVPs and VJPs taken for ``model`` are transposes of each other. A
``JacobianOperator`` already runs one such test when it is built (``self_check=True``); see
``docs/solvers.md``, "Checking the products".

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
from .operators._dottest import dot_test_error
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
    The test is measured against the size of its terms (see
    :mod:`lsr_scale.operators._dottest`): ``|<Au, v> - <u, A^T v>|`` against
    ``||T(|u|)|| ||v|| + ||u|| ||T'(|v|)||``, where ``T`` is
    :meth:`~lsr_scale.LinearOperator.term_matvec` (``|M| |u|`` for a dense matrix, summed
    through ``A + B``, ``A @ B`` and ``alpha * A``). So an operator with large entries is not
    penalised, and neither is one whose terms cancel (``A @ B - AB``): its products are
    rounding noise of the size of the terms, not of the result. For a Jacobian, ``T(|u|)``
    is ``|J |u||``: two more products per trial.
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
        Tu, Tv = A.term_matvec(u[:, 0]), A.term_rmatvec(v[:, 0])
        err, scale = dot_test_error(A, u[:, 0], v[:, 0], Au, Atv, terms=(Tu, Tv))
        ok = err <= rtol * max(scale, torch.finfo(A.dtype).tiny)
        # matmat against matvec, entrywise, relative to the size of each entry's terms
        AU, AtV = A.matmat(u), A.rmatmat(v)
        tol_u = rtol * 10 * (Tu + Au.abs()).amax()
        tol_v = rtol * 10 * (Tv + Atv.abs()).amax()
        ok_mm = bool((AU[:, 0] - Au).abs().amax() <= tol_u) and bool(
            (AtV[:, 0] - Atv).abs().amax() <= tol_v
        )
        if not (ok and ok_mm):
            if raise_error:
                raise AssertionError(
                    f"dottest failed for {A!r}: |<Au,v> - <u,A^T v>| = {err:.3e} against the "
                    f"size of the terms {scale:.3e} (rtol {rtol:g}); matmat consistent: {ok_mm}"
                )
            return False
    return True
