"""Kernel registry: optional CUDA fast paths with torch reference implementations.

Each public function here defines a kernel's semantics in plain torch. The CUDA/CuPy path
(kernels/*.cu, loaded with cupy.RawModule) must produce the same results. The registry never
imports CuPy at package import time.

PLACEHOLDER (being written): only the torch references exist so far.
"""

from __future__ import annotations

import torch

__all__ = ["fwht_", "sparse_sign_apply", "sparse_sign_apply_t", "lowrank_apply", "lsmr_update_"]


def fwht_(X: torch.Tensor) -> torch.Tensor:
    """In-place unnormalized fast Walsh-Hadamard transform along dim 0 of ``X`` (n, k).

    ``n`` must be a power of two. Returns ``X`` (now holding ``H_n @ X`` with entries of
    ``H_n`` equal to +-1, Sylvester ordering).
    """
    n = X.shape[0]
    if n & (n - 1):
        raise ValueError(f"fwht_: expected a power-of-two length, got {n}")
    tail = X.shape[1:]
    h = 1
    while h < n:
        Y = X.reshape(n // (2 * h), 2, h, *tail)
        a = Y[:, 0].clone()
        b = Y[:, 1]
        Y[:, 0].add_(b)
        Y[:, 1].neg_().add_(a)
        h *= 2
    return X


def sparse_sign_apply(indices, values, X, s: int) -> torch.Tensor:
    """Return ``S @ X`` for the sparse-sign sketch S (s x n).

    Column ``j`` of S has nonzeros ``values[j, t]`` at rows ``indices[j, t]``.
    ``indices`` and ``values`` have shape (n, zeta); ``X`` has shape (n, k).
    """
    out = X.new_zeros((s, X.shape[1]))
    zeta = indices.shape[1]
    for t in range(zeta):
        out.index_add_(0, indices[:, t], values[:, t, None] * X)
    return out


def sparse_sign_apply_t(indices, values, Y) -> torch.Tensor:
    """Return ``S.T @ Y`` for the sparse-sign sketch S; ``Y`` has shape (s, k)."""
    return (values[:, :, None] * Y[indices]).sum(dim=1)


def lowrank_apply(U, d, c, y) -> torch.Tensor:
    """Return ``U (d * (U.T y)) + c (y - U U.T y)`` for an orthonormal basis ``U`` (m, l)."""
    Uc = U.to(y.dtype)
    z = Uc.T @ y
    return Uc @ ((d - c) * z if y.ndim == 1 else (d - c)[:, None] * z) + c * y


def lsmr_update_(x, h, hbar, v, a, b, c) -> None:
    """Fused LSMR vector update, in place: ``hbar = h + a*hbar; x += b*hbar; h = v + c*h``.

    ``a``, ``b`` and ``c`` are 0-d tensors (kept on the device: no host sync).
    """
    hbar.mul_(a).add_(h)
    x.add_(b * hbar)
    h.mul_(c).add_(v)


def show_config() -> str:
    """PLACEHOLDER: describe which kernel path is active."""
    s = "lsr_scale kernels: torch reference path"
    print(s)
    return s
