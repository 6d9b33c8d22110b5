"""Randomized range finder and SVD (Halko-Martinsson-Tropp 2011)."""

from __future__ import annotations

import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.operators import LinearOperator
from lsr_scale.precond import NystromPreconditioner
from lsr_scale.randomized import RangeFinder, gaussian, lowrank_gram, resolve_generator

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


def test_no_generator_means_global_rng():
    # The randomness rule: None draws from torch's global RNG, so torch.manual_seed
    # reproduces the result and the global state advances.
    A = decaying(40, 30, torch.Generator().manual_seed(1))[0]
    torch.manual_seed(123)
    Q1 = ls.randomized_range_finder(A, 4)
    state = torch.get_rng_state()
    Q2 = ls.randomized_range_finder(A, 4)
    assert not torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(Q1, Q2)
    torch.manual_seed(123)
    torch.testing.assert_close(ls.randomized_range_finder(A, 4), Q1, rtol=0, atol=0)
    # ... the same numbers as passing the global generator explicitly.
    torch.manual_seed(123)
    Q3 = ls.randomized_range_finder(A, 4, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(Q3, Q1, rtol=0, atol=0)
    assert resolve_generator(None) is torch.default_generator
    g = torch.Generator()
    assert resolve_generator(g) is g


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
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        ls.randomized_range_finder(A, 2, generator=0)
    with pytest.raises(ValueError, match="power_iters: expected a non-negative integer, got -1"):
        RangeFinder(A, power_iters=-1)
    with pytest.raises(ValueError, match="block_size: expected a positive integer, got 0"):
        RangeFinder(A, block_size=0)
    with pytest.raises(ValueError, match="power_iters: expected 0 with method='nystrom', got 1"):
        lowrank_gram(A, 2, method="nystrom", power_iters=1)
    with pytest.raises(ValueError, match="method: expected one of 'svd', 'nystrom', got 'qr'"):
        lowrank_gram(A, 2, method="qr")
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        lowrank_gram(A, 2, generator=1)


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


# ------------------------------------------------------------------ incremental range finder
def test_range_finder_grows_block_by_block_against_dense_svd(generator):
    # Exactly rank 12: three blocks of 4 test vectors recover A, its singular values and
    # its Gram eigenpairs; each block costs only its own products.
    m, n, r = 70, 50, 12
    B = torch.randn(m, r, generator=generator, dtype=F64)
    C = torch.randn(r, n, generator=generator, dtype=F64)
    A, op = B @ C, FactoredOperator(B, C)
    f = RangeFinder(op)
    assert f.rank == 0 and f.Q is None
    for k in range(1, 4):
        f.add(gaussian(n, 4, generator, dtype=F64, device="cpu"))
        assert f.rank == 4 * k
        assert torch.linalg.norm(f.Q.T @ f.Q - torch.eye(4 * k, dtype=F64)) < 1e-12
        _ = f.Bt  # A^T Q for the new block only
        assert (op.num_matvecs, op.num_rmatvecs) == (4 * k, 4 * k)
    assert torch.linalg.norm(A - f.Q @ f.Bt.T) < 1e-10 * torch.linalg.norm(A)
    s = torch.linalg.svdvals(A)[:r]
    U, S, Vh = f.svd(r)
    torch.testing.assert_close(S, s, rtol=1e-10, atol=0)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, A, rtol=0, atol=1e-10)
    V, lam = f.gram_eig()
    torch.testing.assert_close(lam[:r], s.square(), rtol=1e-10, atol=0)
    torch.testing.assert_close((V[:, :r] * lam[:r]) @ V[:, :r].T, A.T @ A, rtol=0, atol=1e-9)
    # The a-posteriori probe: zero error at the full rank, sigma_{r'+1}-sized below it.
    _, res_full = f.residual(gaussian(n, 5, generator, dtype=F64, device="cpu"), r)
    assert float(res_full.max().sqrt()) < 1e-10 * float(s[0])
    _, res_low = f.residual(gaussian(n, 5, generator, dtype=F64, device="cpu"), 6)
    assert float(s[6]) * 0.1 < float(res_low.max().sqrt()) < float(s[6]) * 30


def test_range_finder_past_the_rank_stays_orthonormal(generator):
    # Rank 6, blocks of 4: the second block adds 2 real directions and 2 of rounding noise,
    # which must not spoil the orthonormality of Q (nor the projection Q Q^T A).
    A = low_rank(40, 30, 6, generator)
    for q in (0, 2):
        f = RangeFinder(A, power_iters=q)
        for _ in range(3):
            f.add(gaussian(30, 4, generator, dtype=F64, device="cpu"))
        assert f.rank == 12
        assert torch.linalg.norm(f.Q.T @ f.Q - torch.eye(12, dtype=F64)) < 1e-12
        assert torch.linalg.norm(A - f.Q @ f.Bt.T) < 1e-12 * torch.linalg.norm(A)
        S = f.svd(6)[1]
        torch.testing.assert_close(S, torch.linalg.svdvals(A)[:6], rtol=1e-12, atol=0)


def test_range_finder_power_iters_and_block_size(generator):
    A, s = decaying(90, 60, generator, rate=0.8)
    Om = gaussian(60, 8, generator, dtype=F64, device="cpu")
    errs = []
    for q in (0, 2):
        f = RangeFinder(A, power_iters=q)
        f.add(Om)
        errs.append(float(torch.linalg.matrix_norm(A - f.Q @ f.Bt.T, ord=2)))
    assert errs[1] < errs[0] and errs[1] < 1.5 * float(s[8])
    B, C = torch.linalg.qr(A)
    full, blocked = FactoredOperator(B, C), FactoredOperator(B, C)
    f1, f3 = RangeFinder(full, power_iters=1), RangeFinder(blocked, power_iters=1, block_size=3)
    for f in (f1, f3):
        f.add(Om)
        f.add(Om[:, :5] + 1.0)
    assert blocked.widest == 3 and full.widest == 8
    torch.testing.assert_close(f3.Q, f1.Q, rtol=0, atol=1e-10)
    torch.testing.assert_close(f3.Bt, f1.Bt, rtol=0, atol=1e-10)


def test_randomized_svd_and_nystrom_share_the_finder(generator):
    # lowrank_gram (the Nystrom build) is the randomized SVD of A, read as A^T A = V S^2 V^T.
    A, _ = decaying(80, 40, generator)
    V, lam, info = lowrank_gram(A, 6, oversample=4, generator=torch.Generator().manual_seed(2))
    f = RangeFinder(A)
    om = torch.randn(40, 10, generator=torch.Generator().manual_seed(2), dtype=F64)
    f.add(om)
    V2, lam2 = f.gram_eig()
    assert torch.equal(V, V2[:, :6]) and torch.equal(lam, lam2[:6])
    assert info == {"rank": 6, "error_estimate": None, "history": [], "block_size": None}
    assert ls.precond.lowrank_gram is lowrank_gram
    M = NystromPreconditioner(A, 6, oversample=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(M.U, V)
    _, S, _ = ls.randomized_svd(A, 6, oversample=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(S.square(), lam, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["svd", "nystrom"])
def test_lowrank_gram_block_size(method, generator):
    A, _ = decaying(60, 40, generator)
    B, C = torch.linalg.qr(A)
    ops = FactoredOperator(B, C), FactoredOperator(B, C)
    out = [
        lowrank_gram(
            op,
            4,
            method=method,
            adaptive=True,
            tol=1e-6,
            block_size=bs,
            generator=torch.Generator().manual_seed(4),
        )
        for op, bs in zip(ops, (None, 5))
    ]
    assert ops[1].widest == 5 < ops[0].widest
    assert out[0][2]["rank"] == out[1][2]["rank"]
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-10, atol=1e-14)


def test_gaussian_draw_dtype(generator):
    a = gaussian(5, 3, torch.Generator().manual_seed(0), dtype=torch.float32, device="cpu")
    b = gaussian(
        5,
        3,
        torch.Generator().manual_seed(0),
        dtype=torch.float32,
        device="cpu",
        draw_dtype=F64,
    )
    c = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert a.dtype == b.dtype == torch.float32
    assert torch.equal(b, c.float())
    assert torch.equal(a, torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))


class OutOfMemoryAbove(FactoredOperator):
    """A FactoredOperator whose blocks of more than ``limit`` columns run out of memory (a
    simulated ``torch.OutOfMemoryError``, raised before any work, as an allocator would)."""

    def __init__(self, B, C, limit):
        super().__init__(B, C)
        self.limit, self.failures = limit, 0

    def _check(self, k):
        if k > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError(f"simulated: {k} columns")

    def _matmat(self, X):
        self._check(X.shape[1])
        return super()._matmat(X)

    def _rmatmat(self, Y):
        self._check(Y.shape[1])
        return super()._rmatmat(Y)


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="svd"),
        dict(method="svd", power_iters=1),
        dict(method="svd", adaptive=True, tol=1e-6),
        dict(method="nystrom"),
        dict(method="nystrom", adaptive=True, tol=1e-6),
    ],
    ids=["svd", "power", "svd-adaptive", "nystrom", "nystrom-adaptive"],
)
def test_out_of_memory_halves_the_block(kw, generator):
    # The build under a simulated OOM equals the one without (same generator), bitwise:
    # the test vectors are drawn before the products, and these go column by column.
    A, _ = decaying(60, 40, generator)
    B, C = torch.linalg.qr(A)
    fits = FactoredOperator(B, C)
    ref = lowrank_gram(fits, 8, generator=torch.Generator().manual_seed(4), **kw)
    tight = OutOfMemoryAbove(B, C, limit=5)
    with pytest.warns(RuntimeWarning, match=r"out of memory on a block of \d+ columns; retrying"):
        got = lowrank_gram(tight, 8, generator=torch.Generator().manual_seed(4), **kw)
    assert tight.failures > 0 and tight.widest <= 5
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert got[2]["rank"] == ref[2]["rank"] and ref[2]["block_size"] is None
    assert 1 <= got[2]["block_size"] <= 5


def test_out_of_memory_keeps_the_smaller_block(generator):
    A, _ = decaying(60, 40, generator)
    B, C = torch.linalg.qr(A)
    op = OutOfMemoryAbove(B, C, limit=6)
    f = RangeFinder(op, block_size=16)
    with pytest.warns(RuntimeWarning) as record:
        f.add(gaussian(40, 16, generator, dtype=F64, device="cpu"))
    # 16 -> 8 -> 4, then 4 columns per block for the rest: no more failures or warnings.
    messages = [str(w.message) for w in record]
    assert messages == [
        "RangeFinder: A.matmat: out of memory on a block of 16 columns; retrying with 8 "
        "columns per block (block_size=8 for the rest of this build)",
        "RangeFinder: A.matmat: out of memory on a block of 8 columns; retrying with 4 "
        "columns per block (block_size=4 for the rest of this build)",
    ]
    assert f.block_size == 4 and op.failures == 2
    f.Bt  # noqa: B018 - the A^T Q products run here, at the kept size
    assert op.failures == 2 and op.widest == 4
    # One column that does not fit: the error is the caller's.
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        RangeFinder(OutOfMemoryAbove(B, C, limit=0)).add(
            gaussian(40, 4, generator, dtype=F64, device="cpu")
        )
    # Other errors are not retried.
    bad = OutOfMemoryAbove(B, C, limit=100)
    bad._check = lambda k: (_ for _ in ()).throw(RuntimeError("not memory"))
    with pytest.raises(RuntimeError, match="not memory"):
        RangeFinder(bad).add(gaussian(40, 4, generator, dtype=F64, device="cpu"))


def test_streamed_gram_under_out_of_memory_equals_the_unhindered_build(generator):
    """An out-of-memory halving in the middle of the streamed build changes the block size
    for the blocks that follow, never which columns get computed: the result is the same."""
    from lsr_scale.randomized import lowrank_gram_streamed

    A, _ = decaying(60, 40, generator)
    B, C = torch.linalg.qr(A)
    ref = lowrank_gram_streamed(FactoredOperator(B, C), 12, oversample=4, block_size=8,
                                generator=torch.Generator().manual_seed(4))  # fmt: skip
    tight = OutOfMemoryAbove(B, C, limit=5)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        got = lowrank_gram_streamed(tight, 12, oversample=4, block_size=8,
                                    generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert tight.failures > 0 and tight.widest <= 5
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(got[0].abs(), ref[0].abs(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [8 << 20, 8 * 12 * 30])
def test_tall_svd_inplace_over_row_chunks_matches_the_dense_svd(monkeypatch, chunk_bytes):
    """The streamed build's TSQR and in-place rewrite, in one chunk and in row chunks of
    ``max(2k, bytes / 8k)`` rows (here 30 rows of a 12-column matrix: many chunks, the last
    one short), give the SVD of the whole matrix, and the buffer then holds ``V``."""
    from lsr_scale.randomized import _lowrank

    monkeypatch.setattr(_lowrank, "_STREAM_BYTES", chunk_bytes)
    assert _lowrank.stream_rows(12) == (30 if chunk_bytes < 1 << 20 else (8 << 20) // 96)
    g = torch.Generator().manual_seed(3)
    m, k, r = 257, 12, 9
    B = torch.randn(m, k, generator=g, dtype=torch.float64) * torch.logspace(0, -6, k).double()
    buf = B.clone().reshape(-1)
    V, S, Zh = _lowrank.tall_svd_inplace(buf, m, k, r)
    Ud, Sd, Vhd = torch.linalg.svd(B, full_matrices=False)
    assert torch.allclose(S, Sd[:r], rtol=1e-10)
    assert V.data_ptr() == buf.data_ptr() and V.shape == (m, r)
    # the same singular vectors up to sign, and V S Zh is B's best rank-r approximation
    assert torch.allclose((V * Ud[:, :r]).sum(0).abs(), torch.ones(r, dtype=torch.float64),
                          atol=1e-8)  # fmt: skip
    best = (Ud[:, :r] * Sd[:r]) @ Vhd[:r]
    assert torch.allclose((V * S) @ Zh, best, atol=1e-10)
