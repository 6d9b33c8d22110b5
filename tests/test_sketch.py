"""Sketches: adjointness, embedding quality (with negative controls), blocks, reproducibility."""

import math

import pytest
import scipy.linalg
import torch

from lsr_scale import cuda
from lsr_scale.sketch import GaussianSketch, SparseSignSketch, SRHTSketch, make_sketch
from lsr_scale.testing import dottest

SKETCHES = [GaussianSketch, SRHTSketch, SparseSignSketch]
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _distortion(S, X):
    """Extreme singular values of S X for orthonormal X, and ||X^T S^T S X - I||_F^2."""
    W = S @ X
    sv = torch.linalg.svdvals(W)
    G = W.T @ W - torch.eye(X.shape[1], dtype=X.dtype)
    return float(sv.min()), float(sv.max()), float(torch.linalg.matrix_norm(G) ** 2)


def _subspaces(n, d, gen):
    """Random, coordinate-aligned and Hadamard-aligned orthonormal n x d bases."""
    Q = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=F64)).Q
    E = torch.eye(n, dtype=F64)[:, :d]
    npad = 1 << (n - 1).bit_length()
    H = torch.tensor(scipy.linalg.hadamard(npad), dtype=F64)[:n, 1 : d + 1]
    return {"random": Q, "coordinate": E, "hadamard": torch.linalg.qr(H).Q}


def _embedding_ok(S, X, n_sketch, d):
    """Gaussian-type bound: singular values of S X in 1 -+ (sqrt(d/s) + 4/sqrt(s))."""
    eps = math.sqrt(d / n_sketch) + 4 / math.sqrt(n_sketch)
    smin, smax, _ = _distortion(S, X)
    return 1 - eps <= smin and smax <= 1 + eps


@pytest.mark.parametrize("cls", SKETCHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_dottest(cls, dtype, generator):
    S = cls(300, 40, generator=generator, dtype=dtype)
    assert S.shape == (40, 300) and S.dtype == dtype
    assert dottest(S, generator=_gen(7))


def test_fwht_matches_scipy_hadamard(generator):
    for n in (1, 2, 8, 64):
        X = torch.randn(n, 3, generator=generator, dtype=F64)
        H = torch.tensor(scipy.linalg.hadamard(n), dtype=F64)
        torch.testing.assert_close(cuda.fwht_(X.clone()), H @ X)


def test_srht_dense_structure(generator):
    n, s = 20, 8
    S = SRHTSketch(n, s, generator=generator, dtype=F64)
    H = torch.tensor(scipy.linalg.hadamard(32), dtype=F64)[:, :n]
    expected = H[S.rows] * S.signs[None, :] / math.sqrt(s)
    torch.testing.assert_close(S.to_dense(), expected)
    assert len(set(S.rows.tolist())) == s  # rows sampled without replacement


def test_sparse_sign_structure(generator):
    S = SparseSignSketch(500, 30, zeta=5, generator=generator, dtype=F64)
    D = S.to_dense()
    assert ((D != 0).sum(dim=0) == 5).all()  # distinct rows per column
    torch.testing.assert_close(D.square().sum(dim=0), torch.ones(500, dtype=F64))
    torch.testing.assert_close(D[D != 0].abs(), torch.full((2500,), 1 / math.sqrt(5), dtype=F64))
    assert (D > 0).sum() > 1000 and (D < 0).sum() > 1000  # both signs
    assert SparseSignSketch(10, 4, generator=generator).zeta == 4  # min(8, s)


@pytest.mark.parametrize("cls", SKETCHES)
def test_unbiased_gram(cls):
    # E[S^T S] = I: average over independent draws.
    n, s, trials = 16, 8, 200
    acc = torch.zeros(n, n, dtype=F64)
    for t in range(trials):
        D = cls(n, s, generator=_gen(t), dtype=F64).to_dense()
        acc += D.T @ D
    acc /= trials
    assert float((acc - torch.eye(n, dtype=F64)).abs().max()) < 0.2
    assert float((acc.diagonal() - 1).abs().mean()) < 0.05


@pytest.mark.parametrize("cls", SKETCHES)
def test_subspace_embedding(cls):
    n, s, d = 1000, 200, 8
    frob = []
    for seed in range(5):
        S = cls(n, s, generator=_gen(seed), dtype=F64)
        for name, X in _subspaces(n, d, _gen(100 + seed)).items():
            assert _embedding_ok(S, X, s, d), (cls.__name__, name, seed)
            frob.append(_distortion(S, X)[2])
    # E||X^T S^T S X - I||_F^2 = d (d + 1) / s for a Gaussian sketch (less for the others).
    assert sum(frob) / len(frob) <= 1.4 * d * (d + 1) / s


def test_broken_sketches_fail_the_checks():
    """Negative controls: the checks above catch wrong scaling, missing signs, duplicate rows."""
    n, s, d = 1024, 200, 8
    subs = _subspaces(n, d, _gen(1))
    # Wrong scaling (sqrt(2) too large).
    S = GaussianSketch(n, s, generator=_gen(0), dtype=F64)
    S.matrix *= math.sqrt(2)
    assert not _embedding_ok(S, subs["random"], s, d)
    # SRHT without the random sign flip: Hadamard-aligned vectors map to single rows.
    S = SRHTSketch(n, s, generator=_gen(0), dtype=F64)
    assert _embedding_ok(S, subs["hadamard"], s, d)
    S.signs.fill_(1.0)
    assert not _embedding_ok(S, subs["hadamard"], s, d)
    # Duplicated rows: the second half copies the first (effective size s/2).
    frob_ok, frob_dup = [], []
    for seed in range(5):
        S = GaussianSketch(n, s, generator=_gen(seed), dtype=F64)
        frob_ok.append(_distortion(S, subs["random"])[2])
        S.matrix[s // 2 :] = S.matrix[: s // 2]
        frob_dup.append(_distortion(S, subs["random"])[2])
    bound = 1.4 * d * (d + 1) / s
    assert sum(frob_ok) / 5 <= bound < sum(frob_dup) / 5
    # Sparse sign with duplicated rows: every column hits only the first half.
    S = SparseSignSketch(n, s, generator=_gen(0), dtype=F64)
    S.indices = S.indices % (s // 2)
    frob = [_distortion(S, X)[2] for X in subs.values()]
    assert sum(frob) / len(frob) > bound


@pytest.mark.parametrize("cls", SKETCHES)
def test_apply_blocks_equals_matmat(cls, generator):
    n, k = 257, 5
    S = cls(n, 64, generator=generator, dtype=F64)
    X = torch.randn(n, k, generator=generator, dtype=F64)
    cuts = [0, 10, 100, 101, 257]
    blocks = [(slice(a, b), X[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    blocks.reverse()  # any order
    S.reset_counts()
    torch.testing.assert_close(S.apply_blocks(iter(blocks)), S @ X)
    assert S.num_matvecs == 2 * k
    idx = torch.arange(n - 1, -1, -1)
    torch.testing.assert_close(S.apply_blocks([(idx, X[idx])]), S @ X)


def test_apply_blocks_validates(generator):
    S = SparseSignSketch(50, 10, generator=generator, dtype=F64)
    X = torch.randn(50, 2, generator=generator, dtype=F64)
    with pytest.raises(ValueError, match="covering 50 rows"):
        S.apply_blocks([(slice(0, 20), X[:20])])
    with pytest.raises(ValueError, match="at least one"):
        S.apply_blocks([])
    with pytest.raises(ValueError, match="rows for"):
        S.apply_blocks([(slice(0, 20), X[:10])])
    with pytest.raises(TypeError, match="apply_blocks block: expected dtype torch.float64"):
        S.apply_blocks([(slice(0, 50), X.float())])
    with pytest.raises(
        ValueError, match=r"apply_blocks block: expected shape \(k, l\), got \(50,\)"
    ):
        S.apply_blocks([(slice(0, 50), X[:, 0])])
    with pytest.raises(TypeError, match="apply_blocks block: expected a torch.Tensor"):
        S.apply_blocks([(slice(0, 50), X.numpy())])
    with pytest.raises(ValueError, match="apply_blocks block: expected device cpu, got meta"):
        S.apply_blocks([(slice(0, 50), X.to("meta"))])
    with pytest.raises(ValueError, match="columns"):
        S.apply_blocks([(slice(0, 25), X[:25]), (slice(25, 50), X[25:, :1])])


def test_apply_blocks_from_jacobian_operator(generator):
    from lsr_scale.operators import JacobianOperator

    W = torch.randn(40, 6, generator=generator, dtype=F64)
    J = JacobianOperator(
        [lambda p, W=W[i : i + 10]: torch.tanh(W @ p["x"]) for i in range(0, 40, 10)],
        {"x": torch.randn(6, generator=generator, dtype=F64)},
    )
    V = torch.randn(6, 3, generator=generator, dtype=F64)
    for cls in SKETCHES:
        S = cls(40, 12, generator=_gen(3), dtype=F64)
        torch.testing.assert_close(S.apply_blocks(J.matmat_blocks(V)), S @ (J @ V))


@pytest.mark.parametrize("cls", SKETCHES)
def test_reproducible_with_generator(cls):
    a = cls(100, 20, generator=_gen(5), dtype=F64).to_dense()
    b = cls(100, 20, generator=_gen(5), dtype=F64).to_dense()
    c = cls(100, 20, generator=_gen(6), dtype=F64).to_dense()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # generator=None draws from torch's global RNG: torch.manual_seed reproduces it.
    torch.manual_seed(5)
    d = cls(100, 20, dtype=F64).to_dense()
    e = cls(100, 20, dtype=F64).to_dense()
    assert not torch.equal(d, e)
    torch.testing.assert_close(d, a, rtol=0, atol=0)  # the global RNG seeded like _gen(5)


def test_constructor_validation(generator):
    with pytest.raises(ValueError, match=r"sketch_size: expected <= n_pad \(SRHT\) = 8, got 9"):
        SRHTSketch(5, 9, generator=generator)
    with pytest.raises(ValueError, match="zeta: expected <= sketch_size = 3, got 4"):
        SparseSignSketch(5, 3, zeta=4, generator=generator)
    with pytest.raises(TypeError, match="dtype: expected a floating torch.dtype, got torch.int64"):
        GaussianSketch(5, 2, dtype=torch.int64, generator=generator)
    with pytest.raises(ValueError, match="sketch_size"):
        GaussianSketch(5, 0, generator=generator)
    with pytest.raises(TypeError, match="generator"):
        GaussianSketch(5, 2, generator=0)
    with pytest.raises(ValueError, match="sketch"):
        make_sketch("count", 5, 2)
    S = make_sketch("sparse_sign", 30, 6, zeta=2, generator=generator, dtype=F64)
    assert isinstance(S, SparseSignSketch) and S.zeta == 2
    assert GaussianSketch(5, 2, generator=generator).dtype == torch.get_default_dtype()


@pytest.mark.cuda
@pytest.mark.parametrize("cls", SKETCHES)
def test_cuda_matches_cpu(cls):
    Sc = cls(300, 50, generator=_gen(0), dtype=F64)
    Sg = cls(300, 50, generator=_gen(0), dtype=F64, device="cuda")
    X = torch.randn(300, 4, generator=_gen(1), dtype=F64)
    torch.testing.assert_close((Sg @ X.cuda()).cpu(), Sc @ X)
    assert dottest(Sg)
