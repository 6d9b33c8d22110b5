"""Shared pieces of the preconditioners: build bookkeeping, low-rank operators, column blocks."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from .. import cuda
from .._checks import describe
from ..operators import LinearOperator, aslinearoperator

__all__ = [
    "Preconditioner",
    "LowRankOperator",
    "identity_columns",
    "as_operator",
]


def as_operator(A) -> LinearOperator:
    """``aslinearoperator`` with a boundary-style error message."""
    try:
        return aslinearoperator(A)
    except TypeError:
        raise TypeError(
            "A: expected a LinearOperator, tensor, numpy array or scipy operator, "
            f"got {describe(A)}"
        ) from None


class Preconditioner(LinearOperator):
    """Base of the preconditioners: a square operator plus what its build cost.

    Attributes
    ----------
    build_time : float
        Wall time of the build in seconds (CUDA synchronized).
    build_matvecs, build_rmatvecs : int
        Products with ``A`` (JVPs and VJPs for a Jacobian) the build used.
    name : str
        Short name (``"nystrom"``, ``"sketch"``, ``"jacobi"``).
    """

    name = "preconditioner"

    def __init__(self, m: int, dtype, device) -> None:
        super().__init__((m, m), dtype, device)
        self.build_time = 0.0
        self.build_matvecs = 0
        self.build_rmatvecs = 0

    @contextmanager
    def _recording(self, A: LinearOperator):
        """Record the wall time and the products with ``A`` made inside the block."""
        mv0, rmv0 = A.num_matvecs, A.num_rmatvecs
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.build_time += time.perf_counter() - t0
            self.build_matvecs += A.num_matvecs - mv0
            self.build_rmatvecs += A.num_rmatvecs - rmv0

    @property
    def build_products(self) -> int:
        """``build_matvecs + build_rmatvecs``."""
        return self.build_matvecs + self.build_rmatvecs

    def info(self) -> dict:
        """A JSON-friendly summary of the build (for ``refined.info`` and benchmarks)."""
        return {
            "name": self.name,
            "build_time": self.build_time,
            "build_matvecs": self.build_matvecs,
            "build_rmatvecs": self.build_rmatvecs,
        }


class LowRankOperator(LinearOperator):
    """Symmetric ``c I + U K U^T``: ``U diag(d) U^T + c (I - U U^T)`` for orthonormal ``U``.

    Parameters
    ----------
    U : torch.Tensor
        ``(m, l)`` basis (or a list of column blocks, with ``core``), possibly stored in a lower
        precision than ``dtype``; the kernels upcast it per product in row chunks, so a
        working-precision copy is never whole.
    d : torch.Tensor
        ``(l,)`` eigenvalues of the operator on ``range(U)`` when ``U`` is orthonormal.
    c : float
        Eigenvalue on the orthogonal complement.
    dtype : torch.dtype, optional
        Working dtype (default ``U.dtype``).
    core : torch.Tensor, optional
        ``(l, l)`` symmetric core ``K``; the operator is then ``c I + U K U^T`` and ``d`` is
        informational. Used for a rounded (not exactly orthonormal) basis.

    Notes
    -----
    Without ``core`` the product is ``lsr_scale.cuda.lowrank_apply(U, d, c, y)``; with it,
    ``lowrank_project`` (``z = U^T y``), the core, then ``lowrank_expand`` (``U w + c y``).
    All are looked up at call time, so the CUDA fast paths registered there are used.
    """

    def __init__(self, U, d, c, dtype=None, *, core=None) -> None:
        blocks = list(U) if isinstance(U, (list, tuple)) else [U]
        dtype = blocks[0].dtype if dtype is None else dtype
        m = blocks[0].shape[0]
        super().__init__((m, m), dtype, blocks[0].device)
        if core is None and len(blocks) != 1:
            raise ValueError("U: expected one basis tensor without a core")
        self.blocks = blocks
        self.U = blocks[0]
        self.d = d.to(dtype)
        self.c = float(c)
        self.core = None if core is None else core.to(dtype)

    def _matvec(self, x):
        if self.core is None:
            return cuda.lowrank_apply(self.U, self.d, self.c, x)
        # Two passes over the (possibly bf16) basis blocks with the small core between them;
        # both passes go through the kernel registry (fused CUDA kernels on a GPU).
        z = torch.cat([cuda.lowrank_project(B, x) for B in self.blocks], dim=0)
        w = self.core @ z
        out, scale, k0 = x, self.c, 0
        for B in self.blocks:  # out = c x + sum_k B_k w_k
            out = cuda.lowrank_expand(B, w[k0 : k0 + B.shape[1]], scale, out)
            scale, k0 = 1.0, k0 + B.shape[1]
        return out

    _rmatvec = _matvec
    _matmat = _matvec
    _rmatmat = _matvec


def identity_columns(m: int, j0: int, j1: int, dtype, device) -> torch.Tensor:
    """``E = I[:, j0:j1]`` (``m x (j1 - j0)``): ``A @ E`` is ``A[:, j0:j1]``."""
    E = torch.zeros((m, j1 - j0), dtype=dtype, device=device)
    E[torch.arange(j0, j1, device=device), torch.arange(j1 - j0, device=device)] = 1
    return E
