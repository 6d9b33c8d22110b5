"""Fast Walsh-Hadamard transform (SRHT sketch): torch reference and CUDA launch (``fwht.cu``)."""

from __future__ import annotations

import torch

from . import _loader, _registry

__all__ = ["fwht_"]


def _fwht_torch(X: torch.Tensor) -> torch.Tensor:
    """Reference: log2(n) butterfly stages in place, lowest stride first (defines the semantics)."""
    n = X.shape[0]
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


def _floor_pow2(x: int) -> int:
    return 1 << (int(x).bit_length() - 1)


def _fwht_plan(n: int, k: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Passes (outer, L, inner, C): each applies log2(L) butterfly stages in shared memory."""
    passes = []
    h0 = 1
    while h0 < n:
        inner = h0 * k
        C = min(inner, 32)
        L = min(n // h0, _floor_pow2(tile // C))
        passes.append((n // (h0 * L), L, inner, C))
        h0 *= L
    return passes


def _fwht_cuda(X: torch.Tensor) -> None:
    n = X.shape[0]
    k = X.numel() // n
    dev = _loader.index_of(X)
    tile = 4096 if X.dtype == torch.float32 else 2048  # 16 KiB of shared memory per block
    kernel = _registry.entry("fwht_pass", X.dtype)
    cap = _loader.sm_count(dev) * 16
    i64 = _loader.i64
    for outer, L, inner, C in _fwht_plan(n, k, tile):
        ncol = -(-inner // C)
        grid = min(outer * ncol, cap)
        threads = min(512, max(32, (L * C) // 2))
        _loader.launch(
            kernel,
            dev,
            (grid,),
            (threads,),
            (X, i64(outer), i64(L), i64(inner), i64(C), i64(ncol)),
            shared_mem=L * C * X.element_size(),
        )


def fwht_(X: torch.Tensor) -> torch.Tensor:
    """In-place unnormalized fast Walsh-Hadamard transform along dim 0.

    Afterwards ``X`` holds ``H_n @ X``, with ``H_n`` the +-1 Sylvester-ordered Hadamard matrix
    (``scipy.linalg.hadamard(n)``). Trailing dims are batched.

    CUDA path (float32/float64 CUDA tensors): one shared-memory pass for the first log2(tile)
    stages, then global passes that each batch up to 7 further stages; bit-identical to the
    torch path.

    Parameters
    ----------
    X : torch.Tensor
        Shape (n, ...) with ``n`` a power of two (padding is the caller's job).

    Returns
    -------
    torch.Tensor
        ``X`` itself, transformed.

    Examples
    --------
    >>> import torch
    >>> fwht_(torch.tensor([1.0, 2.0])).tolist()
    [3.0, -1.0]
    """
    n = X.shape[0] if X.ndim else 0
    if X.ndim == 0 or n & (n - 1):
        raise ValueError(
            f"fwht_: expected a power-of-two length along dim 0, got shape {tuple(X.shape)}"
        )
    if n <= 1 or X.numel() == 0:
        return X
    if X.dtype in _registry.WORK_DTYPES and _registry.use_cuda("fwht", X):
        Y = X if X.is_contiguous() else X.contiguous()
        _fwht_cuda(Y)
        if Y is not X:
            X.copy_(Y)
        return X
    return _fwht_torch(X)
