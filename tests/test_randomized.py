"""Randomized range finder and SVD (Halko-Martinsson-Tropp 2011)."""

from __future__ import annotations

import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.operators import LinearOperator

F64 = torch.float64


def low_rank(m, n, r, generator, dtype=F64):
    return torch.randn(m, r, generator=generator, dtype=dtype) @ torch.randn(
        r, n, generator=generator, dtype=dtype
    )


def decaying(m, n, generator, rate=0.7):
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=generator, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=F64))
    s = rate ** torch.arange(k, dtype=F64)
    return U @ torch.diag(s) @ V.T, s


class FactoredOperator(LinearOperator):
    """B @ C applied as two products, column by column (never a dense A); records the widest
    block passed to matmat/rmatmat."""

    def __init__(self, B, C):
        super().__init__((B.shape[0], C.shape[1]), B.dtype, B.device)
        self.B, self.C = B, C
        self.widest = 0

    def _matvec(self, x):
        return self.B @ (self.C @ x)

    def _rmatvec(self, y):
        return self.C.T @ (self.B.T @ y)

    def _matmat(self, X):
        self.widest = max(self.widest, X.shape[1])
        return super()._matmat(X)

    def _rmatmat(self, Y):
        self.widest = max(self.widest, Y.shape[1])
        return super()._rmatmat(Y)


def test_range_finder_shape_and_orthonormality(dtype, generator):
    A = low_rank(60, 40, 5, generator, dtype)
    Q = ls.randomized_range_finder(A, 5, generator=generator)
    assert Q.shape == (60, 15) and Q.dtype == dtype
    eye = torch.eye(15, dtype=dtype)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert torch.linalg.norm(Q.T @ Q - eye) < tol
    # columns clipped to min(m, n)
    assert ls.randomized_range_finder(A, 35, generator=generator).shape == (60, 40)
    assert ls.randomized_range_finder(A.T, 35, generator=generator).shape == (40, 40)


@pytest.mark.parametrize("power_iters", [0, 2])
def test_exact_recovery_of_low_rank(power_iters, generator):
    A = low_rank(80, 50, 6, generator)
    U, S, Vh = ls.randomized_svd(A, 6, oversample=4, power_iters=power_iters, generator=generator)
    assert U.shape == (80, 6) and S.shape == (6,) and Vh.shape == (6, 50)
    assert torch.linalg.norm(U @ torch.diag(S) @ Vh - A) < 1e-10 * torch.linalg.norm(A)
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:6], rtol=1e-10, atol=0)
    assert torch.all(S[:-1] >= S[1:])
    assert torch.linalg.norm(U.T @ U - torch.eye(6, dtype=F64)) < 1e-12
    assert torch.linalg.norm(Vh @ Vh.T - torch.eye(6, dtype=F64)) < 1e-12
    Q = ls.randomized_range_finder(A, 6, oversample=0, generator=generator)
    assert torch.linalg.norm(A - Q @ (Q.T @ A)) < 1e-10 * torch.linalg.norm(A)


def test_error_bound_decaying_spectrum(generator):
    # HMT 2011, Thm 10.6: E||A - Q Q^T A|| <= (1 + sqrt(k/(p-1))) sigma_{k+1}
    #   + e sqrt(k+p)/p (sum_{j>k} sigma_j^2)^{1/2}; allow 3x for one draw. Power iterations
    # shrink the error towards sigma_{k+1}.
    m, n, k, p = 120, 80, 10, 6
    A, s = decaying(m, n, generator)
    tail = float(torch.linalg.norm(s[k:]))
    bound = (1 + math.sqrt(k / (p - 1))) * float(s[k]) + math.e * math.sqrt(k + p) / p * tail
    bound *= 3
    errs = []
    for q in (0, 1, 3):
        Q = ls.randomized_range_finder(A, k, oversample=p, power_iters=q, generator=generator)
        errs.append(float(torch.linalg.matrix_norm(A - Q @ (Q.T @ A), ord=2)))
    assert errs[0] <= bound
    assert errs[2] <= errs[0]
    # optimal rank-(k+p) error is sigma_{k+p+1}; never beaten
    assert min(errs) >= float(s[k + p]) * (1 - 1e-8)
    # singular values: accurate for the leading ones
    U, S, Vh = ls.randomized_svd(A, k, oversample=p, power_iters=2, generator=generator)
    torch.testing.assert_close(S[:5], s[:5], rtol=1e-6, atol=0)
    assert float(torch.linalg.matrix_norm(A - U @ torch.diag(S) @ Vh, ord=2)) <= 2 * float(s[k])


def test_reproducible_with_generator():
    A = decaying(50, 30, torch.Generator().manual_seed(1))[0]
    out1 = ls.randomized_svd(A, 5, generator=torch.Generator().manual_seed(7))
    out2 = ls.randomized_svd(A, 5, generator=torch.Generator().manual_seed(7))
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    Q1 = ls.randomized_range_finder(A, 5, generator=torch.Generator().manual_seed(7))
    Q2 = ls.randomized_range_finder(A, 5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(Q1, Q2)


def test_no_generator_leaves_global_rng_alone():
    A = decaying(40, 30, torch.Generator().manual_seed(1))[0]
    state = torch.get_rng_state()
    Q1 = ls.randomized_range_finder(A, 4)
    Q2 = ls.randomized_range_finder(A, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(Q1, Q2)  # fresh non-deterministic seed each call


def test_matrix_free_operator_and_block_size(generator):
    B = torch.randn(70, 4, generator=generator, dtype=F64)
    C = torch.randn(4, 45, generator=generator, dtype=F64)
    op = FactoredOperator(B, C)
    U, S, Vh = ls.randomized_svd(op, 4, oversample=5, power_iters=1, generator=generator)
    assert torch.linalg.norm(U @ torch.diag(S) @ Vh - B @ C) < 1e-10 * torch.linalg.norm(B @ C)
    ell = 9
    # (power_iters + 1) passes each way for the range, one more A^T pass for B = Q^T A
    assert op.num_matvecs == ell * 2 and op.num_rmatvecs == ell * 2
    assert op.widest == ell

    op2 = FactoredOperator(B, C)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = ls.randomized_svd(op, 4, oversample=5, power_iters=1, generator=g1)
    blocked = ls.randomized_svd(op2, 4, oversample=5, power_iters=1, generator=g2, block_size=2)
    assert op2.widest == 2
    for a, b in zip(full, blocked):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_and_scipy_operator(generator):
    import scipy.sparse as sp

    A = low_rank(40, 30, 3, generator, torch.float32)
    U, S, Vh = ls.randomized_svd(A, 3, generator=generator)
    assert U.dtype == torch.float32
    assert torch.linalg.norm(U @ torch.diag(S) @ Vh - A) < 1e-4 * torch.linalg.norm(A)
    D = sp.diags([3.0, 2.0, 1.0, 0.0, 0.0])
    U, S, Vh = ls.randomized_svd(D, 3, generator=generator)
    torch.testing.assert_close(S, torch.tensor([3.0, 2.0, 1.0], dtype=F64))


def test_bad_arguments(generator):
    A = torch.randn(8, 5, generator=generator, dtype=F64)
    with pytest.raises(ValueError, match=r"rank: expected <= min\(m, n\) = 5, got 6"):
        ls.randomized_svd(A, 6, generator=generator)
    with pytest.raises(ValueError, match=r"rank: expected <= min\(m, n\) = 5, got 6"):
        ls.randomized_range_finder(A, 6, generator=generator)
    with pytest.raises(ValueError, match="rank: expected a positive integer"):
        ls.randomized_svd(A, 0)
    with pytest.raises(ValueError, match="oversample"):
        ls.randomized_svd(A, 2, oversample=-1)
    with pytest.raises(ValueError, match="power_iters"):
        ls.randomized_svd(A, 2, power_iters=1.5)
    with pytest.raises(ValueError, match="block_size"):
        ls.randomized_range_finder(A, 2, block_size=0)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        ls.randomized_range_finder(A, 2, generator=0)


@pytest.mark.cuda
def test_cuda_with_cpu_generator():
    A = decaying(60, 40, torch.Generator().manual_seed(1))[0]
    g_cpu = torch.Generator().manual_seed(5)
    U, S, Vh = ls.randomized_svd(A.cuda(), 5, generator=g_cpu)
    assert U.device.type == "cuda"
    ref = ls.randomized_svd(A, 5, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(S.cpu(), ref[1], rtol=1e-10, atol=1e-12)
    g_cuda = torch.Generator(device="cuda").manual_seed(5)
    U2, S2, _ = ls.randomized_svd(A.cuda(), 5, generator=g_cuda)
    torch.testing.assert_close(S2.cpu(), torch.linalg.svdvals(A)[:5], rtol=1e-3, atol=0)
