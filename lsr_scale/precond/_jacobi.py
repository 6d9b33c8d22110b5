"""Column-norm (Jacobi) scaling: the baseline right preconditioner."""

from __future__ import annotations

import torch

from .._checks import check_choice, check_generator, check_positive_int, check_tolerance
from ..operators import LinearOperator
from ..randomized import resolve_generator
from ..randomized._blocks import run_blocks
from ._common import Preconditioner, as_operator, identity_columns

__all__ = ["JacobiPreconditioner", "column_norms"]


# Columns per batched product: a JacobianOperator's vmap holds activations for every column
# at once, so large groups cost gigabytes (measured 2.5-5.4 GB at 2,000 columns).
_MAX_CHUNK = 256


def column_norms(
    A: LinearOperator, *, method="auto", num_samples=64, max_exact=4096, generator=None, chunk=None
) -> tuple[torch.Tensor, str]:
    """Squared column norms ``||a_j||^2`` of ``A`` (n x m) and the method used.

    ``"exact"`` uses ``min(n, m)`` products: ``m`` matvecs on identity columns
    (``||A e_j||^2``) when ``m <= n``, else ``n`` rmatvecs on identity rows (rows of ``A``,
    summed squared). ``"hutchinson"`` uses ``num_samples`` rmatvecs with Rademacher vectors
    ``z``: ``||a_j||^2 = E[(A^T z)_j^2]`` (relative error about ``sqrt(2 / num_samples)``
    per column). ``"auto"`` is exact when ``min(n, m) <= max_exact``. A block of ``chunk``
    columns that runs out of memory is halved and retried (a ``RuntimeWarning`` says so);
    the Rademacher vectors are drawn ``chunk`` at a time before, so they do not change.
    """
    n, m = A.shape
    check_choice(method, ("auto", "exact", "hutchinson"), "method")
    check_generator(generator)
    if chunk is not None:
        chunk = check_positive_int(chunk, "chunk")
    if method == "auto":
        method = "exact" if min(n, m) <= max_exact else "hutchinson"
    what = "JacobiPreconditioner: column norms"
    dev = A.device
    out = torch.zeros(m, dtype=A.dtype, device=dev)
    if method == "exact":
        if m <= n:
            c = chunk or max(1, min(m, _MAX_CHUNK, (1 << 24) // max(n, 1)))

            def step(j0, j1):
                E = identity_columns(m, j0, j1, A.dtype, dev)
                out[j0:j1] = A.row_reduce(A.matmat(E).square().sum(dim=0))

            run_blocks(m, c, step, what=what, setting="chunk", device=dev)
            return out, method
        c = chunk or max(1, min(n, _MAX_CHUNK, (1 << 24) // max(m, 1)))

        def step(j0, j1):
            out.add_(A.rmatmat(identity_columns(n, j0, j1, A.dtype, dev)).square().sum(dim=1))

        run_blocks(n, c, step, what=what, setting="chunk", device=dev)
        return out, method
    k = check_positive_int(num_samples, "num_samples")
    gen = resolve_generator(generator)
    c = chunk or max(1, min(k, _MAX_CHUNK, (1 << 24) // max(m, n, 1)))
    size, done = c, 0
    while done < k:
        b = min(c, k - done)
        Z = torch.randint(0, 2, (n, b), generator=gen, device=gen.device)
        Z = (2.0 * Z - 1.0).to(dtype=A.dtype, device=dev)

        def step(j0, j1, Z=Z):
            Zj = Z if (j0, j1) == (0, Z.shape[1]) else Z[:, j0:j1].contiguous()
            out.add_(A.rmatmat(Zj).square().sum(dim=1))

        size = run_blocks(b, size, step, what=what, setting="chunk", device=dev)
        done += b
    return out / k, method


class JacobiPreconditioner(Preconditioner):
    """Column scaling ``M = diag(1 / sqrt(||a_j||^2 + damp^2))`` (zero columns: 1).

    The baseline that the other preconditioners must beat: it equilibrates the columns of
    ``[A; damp I]`` but leaves their correlations, which is where a trained network's
    ill-conditioning mostly lives.

    Parameters
    ----------
    A : LinearOperator (n x m) or anything :func:`lsr_scale.aslinearoperator` accepts.
    damp : float
        The damping of the least-squares problem.
    method : {"auto", "exact", "hutchinson"}
        How to get the column norms (see :func:`column_norms`). ``"exact"`` costs
        ``min(n, m)`` products (``m`` JVPs, or ``n`` VJPs when ``n < m``), batched;
        ``"hutchinson"`` costs ``num_samples`` VJPs and is unbiased but noisy. ``"auto"``
        (default) is exact when ``min(n, m) <= max_exact``.
    num_samples : int
        Rademacher probes for ``"hutchinson"`` (default 64).
    max_exact : int
        Threshold of ``"auto"`` (default 4096).
    generator : torch.Generator, optional
        For ``"hutchinson"``; None: torch's global RNG.

    Attributes
    ----------
    scale : torch.Tensor
        The diagonal of ``M``.
    norm_method : str
        ``"exact"`` or ``"hutchinson"``.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> A = torch.tensor([[3.0, 0.0], [4.0, 0.0]])
    >>> ls.precond.JacobiPreconditioner(A).scale
    tensor([0.2000, 1.0000])
    """

    name = "jacobi"

    def __init__(
        self, A, damp=0.0, *, method="auto", num_samples=64, max_exact=4096, generator=None
    ) -> None:
        A = as_operator(A)
        damp = check_tolerance(damp, "damp")
        super().__init__(A.shape[1], A.dtype, A.device)
        self.damp = damp
        with torch.no_grad(), self._recording(A):
            sq, self.norm_method = column_norms(
                A,
                method=method,
                num_samples=num_samples,
                max_exact=max_exact,
                generator=generator,
            )
            denom = sq + damp**2
            self.scale = torch.where(
                denom > 0,
                denom.clamp_min(torch.finfo(A.dtype).tiny).rsqrt(),
                torch.ones_like(denom),
            )

    def _matvec(self, x):
        return self.scale * x

    _rmatvec = _matvec

    def _matmat(self, X):
        return self.scale[:, None] * X

    _rmatmat = _matmat

    def info(self) -> dict:
        out = super().info()
        out.update(damp=self.damp, norm_method=self.norm_method)
        return out
