"""lsr_scale.cuda kernels: torch fallbacks against dense references, CUDA sources, GPU kernels.

CPU tests check every torch fallback against a plain dense reference (Hadamard matrix, dense
sketch matrix, dense preconditioner formula, explicit update formulas) to 1e-6 relative in fp32
and 1e-12 in fp64 (normwise: ||out - ref||_F / ||ref||_F). GPU tests (marker ``cuda``) check
each CUDA kernel against its torch fallback. The registry, the switch and the loader are
tested in ``test_cuda_package.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from lsr_scale import cuda as K
from lsr_scale.cuda import _loader, _registry, fwht, lowrank, sparse_sign

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def relerr(out, ref) -> float:
    out = torch.as_tensor(out).double().cpu()
    ref = torch.as_tensor(ref).double().cpu()
    den = ref.norm()
    return float((out - ref).norm() / (den if den > 0 else 1.0))


# ---------------------------------------------------------------------------------------------
# FWHT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 16, 1024])
@pytest.mark.parametrize("k", [1, 3])
def test_fwht_matches_dense_hadamard(n, k, dtype, generator):
    X = torch.randn(n, k, generator=generator, dtype=torch.float64)
    ref = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64)) @ X
    Y = X.to(dtype).clone()
    out = K.fwht_(Y)
    assert out is Y
    assert relerr(Y, ref) <= TOL[dtype]


def test_fwht_vector_and_batched_tail(dtype, generator):
    n = 64
    H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    assert relerr(K.fwht_(x.to(dtype).clone()), H @ x) <= TOL[dtype]
    X = torch.randn(n, 2, 3, generator=generator, dtype=torch.float64)
    ref = (H @ X.reshape(n, 6)).reshape(n, 2, 3)
    assert relerr(K.fwht_(X.to(dtype).clone()), ref) <= TOL[dtype]


def test_fwht_noncontiguous_inplace(generator):
    n = 32
    H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    base = torch.randn(4, n, generator=generator, dtype=torch.float64)
    X = base.t()  # (n, 4), not contiguous
    ref = H @ X
    K.fwht_(X)
    assert relerr(base.t(), ref) <= 1e-12


@pytest.mark.parametrize("n", [0, 3, 12])
def test_fwht_rejects_non_power_of_two(n):
    if n == 0:
        with pytest.raises(ValueError):
            K.fwht_(torch.tensor(1.0))
        return
    with pytest.raises(ValueError, match="power-of-two"):
        K.fwht_(torch.zeros(n, 2))


def _emulate_fwht_kernel(X: np.ndarray, tile: int) -> np.ndarray:
    """Replay fwht.cu's pass/tile/butterfly index arithmetic in numpy (host plan included)."""
    n = X.shape[0]
    k = X.size // n
    flat = X.reshape(-1).copy()
    for outer, L, inner, C in fwht._fwht_plan(n, k, tile):
        ncol = -(-inner // C)
        for tile_id in range(outer * ncol):
            o, ct = divmod(tile_id, ncol)
            c0 = ct * C
            cw = min(C, inner - c0)
            e = np.arange(L * C)
            r, c = e // C, e % C
            addr = o * L * inner + r * inner + c0 + c
            valid = c < cw
            s = np.where(valid, flat[np.where(valid, addr, 0)], 0.0)
            p = np.arange((L // 2) * C)
            q, cc = p // C, p % C
            h = 1
            while h < L:
                i = ((q & ~(h - 1)) << 1) | (q & (h - 1))
                ia = i * C + cc
                ib = ia + h * C
                a, b = s[ia].copy(), s[ib].copy()
                s[ia], s[ib] = a + b, a - b
                h <<= 1
            flat[addr[valid]] = s[valid]
    return flat.reshape(X.shape)


@pytest.mark.parametrize("n,k,tile", [(2**9, 1, 64), (2**7, 5, 64), (2**6, 40, 64), (8, 3, 4096)])
def test_fwht_kernel_plan_emulated(n, k, tile, generator):
    """The pass plan and in-tile indexing of the CUDA kernel reproduce H_n X exactly."""
    X = torch.randn(n, k, generator=generator, dtype=torch.float64).numpy()
    ref = scipy.linalg.hadamard(n) @ X
    assert len(fwht._fwht_plan(n, k, tile)) >= (2 if tile == 64 else 1)
    np.testing.assert_allclose(_emulate_fwht_kernel(X, tile), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# sparse-sign sketch
# ---------------------------------------------------------------------------------------------


def _sketch(n, s, zeta, generator, dtype=torch.float64):
    indices = torch.randint(0, s, (n, zeta), generator=generator)  # repeated rows allowed
    signs = torch.randint(0, 2, (n, zeta), generator=generator) * 2 - 1
    values = (signs / np.sqrt(zeta)).to(dtype)
    return indices, values


def _dense_sketch(indices, values, s) -> np.ndarray:
    n, zeta = indices.shape
    S = np.zeros((s, n))
    cols = np.repeat(np.arange(n), zeta)
    np.add.at(S, (indices.reshape(-1).numpy(), cols), values.double().reshape(-1).numpy())
    return S


SKETCH_SHAPES = [(1, 1, 1, 1), (50, 7, 3, 5), (300, 64, 8, 1), (257, 33, 2, 40)]


@pytest.mark.parametrize("n,s,zeta,k", SKETCH_SHAPES)
def test_sparse_sign_matches_dense(n, s, zeta, k, dtype, generator):
    indices, values = _sketch(n, s, zeta, generator, dtype)
    X = torch.randn(n, k, generator=generator, dtype=torch.float64)
    S = _dense_sketch(indices, values, s)
    out = K.sparse_sign_apply(indices, values, X.to(dtype), s)
    assert out.shape == (s, k) and out.dtype == dtype
    assert relerr(out, S @ X.numpy()) <= TOL[dtype]
    Y = torch.randn(s, k, generator=generator, dtype=torch.float64)
    outt = K.sparse_sign_apply_t(indices, values, Y.to(dtype))
    assert outt.shape == (n, k)
    assert relerr(outt, S.T @ Y.numpy()) <= TOL[dtype]


def test_sparse_sign_vectors_and_out(generator):
    indices, values = _sketch(40, 9, 4, generator)
    S = _dense_sketch(indices, values, 9)
    x = torch.randn(40, generator=generator, dtype=torch.float64)
    out = torch.full((9,), float("nan"), dtype=torch.float64)
    res = K.sparse_sign_apply(indices, values, x, 9, out=out)
    assert res is out and relerr(out, S @ x.numpy()) <= 1e-12
    y = torch.randn(9, generator=generator, dtype=torch.float64)
    assert relerr(K.sparse_sign_apply_t(indices, values, y), S.T @ y.numpy()) <= 1e-12


def test_sparse_sign_padded_formulation_matches_dense(dtype, generator):
    """The torch formulation used on GPUs without CuPy (collision-free padded gather)."""
    n, s, zeta, k = 300, 17, 4, 6
    indices, values = _sketch(n, s, zeta, generator, dtype)
    X = torch.randn(n, k, generator=generator, dtype=torch.float64).to(dtype)
    csr = K.sparse_sign_csr(indices, values, s)
    ref = _dense_sketch(indices, values, s) @ X.double().numpy()
    out = sparse_sign._sparse_sign_torch_padded(csr, X)
    assert relerr(out, ref) <= TOL[dtype]
    # column chunking (decided by shapes only) agrees to rounding; repeated runs: same bits
    assert relerr(sparse_sign._sparse_sign_torch_padded(csr, X, chunk_bytes=1), ref) <= TOL[dtype]
    for _ in range(3):
        assert torch.equal(sparse_sign._sparse_sign_torch_padded(csr, X), out)


def test_sparse_sign_csr_order_reproduces_cpu_bits(generator):
    """Sequential sums in the CSR (t, j) order, with separately rounded products -- what
    sparse_sign.cu does per output element -- equal the CPU index_add_ result bit for bit."""
    n, s, zeta, k = 200, 11, 5, 3
    indices, values = _sketch(n, s, zeta, generator, torch.float32)
    X = torch.randn(n, k, generator=generator)
    csr = K.sparse_sign_csr(indices, values, s)
    rowptr, col, val = csr.rowptr.numpy(), csr.col.numpy(), csr.val.numpy()
    Xn = X.numpy()
    emu = np.zeros((s, k), dtype=np.float32)
    for r in range(s):
        acc = np.zeros(k, dtype=np.float32)
        for p in range(rowptr[r], rowptr[r + 1]):
            acc = acc + val[p] * Xn[col[p]]  # float32 product, then float32 sum
        emu[r] = acc
    ref = K.sparse_sign_apply(indices, values, X, s)
    assert np.array_equal(emu, ref.numpy())
    assert csr.max_per_row == int(np.diff(rowptr).max())


def test_sparse_sign_deterministic_cpu(generator):
    indices, values = _sketch(500, 31, 8, generator, torch.float32)
    X = torch.randn(500, 7, generator=generator)
    first = K.sparse_sign_apply(indices, values, X, 31)
    for _ in range(9):
        assert torch.equal(K.sparse_sign_apply(indices, values, X, 31), first)


def test_sparse_sign_rejects_bad_input(generator):
    indices, values = _sketch(10, 5, 2, generator)
    with pytest.raises(ValueError, match="expected indices in"):
        K.sparse_sign_csr(indices, values, 3)
    with pytest.raises(ValueError, match="same shape"):
        K.sparse_sign_apply(indices, values[:, :1], torch.zeros(10, 2), 5)
    with pytest.raises(ValueError, match="expected X of shape"):
        K.sparse_sign_apply(indices, values, torch.zeros(11, 2), 5)


# ---------------------------------------------------------------------------------------------
# low-rank preconditioner
# ---------------------------------------------------------------------------------------------


def _basis(m, l, generator):
    A = torch.randn(m, l, generator=generator, dtype=torch.float64)
    U = torch.linalg.qr(A).Q
    d = torch.rand(l, generator=generator, dtype=torch.float64) * 10 + 0.1
    return U, d


def _dense_precond(U, d, c) -> np.ndarray:
    U = U.double().numpy()
    d = d.double().numpy()
    return U @ np.diag(d) @ U.T + c * (np.eye(U.shape[0]) - U @ U.T)


@pytest.mark.parametrize("m,l", [(1, 1), (257, 20), (300, 21)])
@pytest.mark.parametrize("k", [None, 1, 4])
@pytest.mark.parametrize("c_kind", ["float", "tensor"])
def test_lowrank_matches_dense(m, l, k, c_kind, dtype, generator):
    U, d = _basis(m, l, generator)
    c = 0.37
    P = _dense_precond(U, d, c)
    y = torch.randn(m, *(() if k is None else (k,)), generator=generator, dtype=torch.float64)
    cc = c if c_kind == "float" else torch.tensor(c, dtype=dtype)
    out = K.lowrank_apply(U.to(dtype), d.to(dtype), cc, y.to(dtype))
    assert out.shape == y.shape and out.dtype == dtype
    assert relerr(out, P @ y.numpy()) <= TOL[dtype] * 5  # a few O(eps) terms of size ||y||


# bf16 / fp16 storage: unit roundoff u (round to nearest) and the subnormal spacing of fp16.
_U16 = {torch.bfloat16: (2.0**-8, 0.0), torch.float16: (2.0**-11, 2.0**-25)}


@pytest.mark.parametrize("store", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunked", [False, True])
def test_lowrank_lowprec_storage_bound(store, chunked, generator):
    """Stored basis Ut = fl(U): |Ut - U| <= u |U| + eta elementwise, so
    delta = ||Ut - U||_2 <= ||Ut - U||_F <= u ||U||_F + eta sqrt(m l) = u sqrt(l) + eta sqrt(m l).
    With P = U W U^T + c I and W = diag(d - c), ||U||_2 = 1:
        ||Pt y - P y|| <= (2 delta + delta^2) max|d - c| ||y||.
    The arithmetic itself (fp32 accumulation of the stored values) is checked separately
    against an exact fp64 evaluation with the rounded basis, to 1e-5 relative."""
    m, l = 400, 30
    U, d = _basis(m, l, generator)
    c = 0.5
    y = torch.randn(m, generator=generator, dtype=torch.float64)
    Us = U.to(store)
    if chunked:  # the row-chunked upcast of the torch path (tiny chunks)
        out = lowrank._lowrank_torch(Us, d.float(), c, y.float(), chunk_bytes=999)
    else:
        out = K.lowrank_apply(Us, d.float(), c, y.float())
    # (i) arithmetic: fp32 accumulation vs exact evaluation with the stored (rounded) basis
    exact_rounded = _dense_precond(Us.double(), d, c) @ y.numpy()
    assert relerr(out, exact_rounded) <= 1e-5
    # (ii) storage: a priori bound vs the exact orthonormal basis
    u, eta = _U16[store]
    delta = u * np.sqrt(l) + eta * np.sqrt(m * l)
    bound = (2 * delta + delta**2) * float((d - c).abs().max()) * float(y.norm())
    err = np.linalg.norm(out.double().numpy() - _dense_precond(U, d, c) @ y.numpy())
    arith = 1e-5 * float(torch.linalg.norm(torch.from_numpy(exact_rounded)))
    assert err <= bound + arith
    # the realised delta respects its a priori bound
    assert float(torch.linalg.matrix_norm(Us.double() - U, ord=2)) <= delta


def test_lowrank_chunked_equals_direct(generator):
    U, d = _basis(333, 12, generator)
    y = torch.randn(333, 2, generator=generator)
    Ub = U.to(torch.bfloat16)
    a = lowrank._lowrank_torch(Ub, d.float(), 0.2, y)
    b = lowrank._lowrank_torch(Ub, d.float(), 0.2, y, chunk_bytes=12 * 4 * 50)
    assert relerr(a, b) <= 1e-6


@pytest.mark.parametrize("store", ["same", torch.bfloat16])
@pytest.mark.parametrize("k", [None, 3])
def test_lowrank_project_expand_match_dense(store, k, dtype, generator):
    """The two passes a core-based preconditioner uses: U^T y, then U w + c y."""
    m, l = 257, 20
    U = torch.randn(m, l, generator=generator, dtype=dtype)
    Us = U if store == "same" else U.to(store)
    Uw = Us.to(dtype)  # what the kernels compute with
    shape = (m,) if k is None else (m, k)
    y = torch.randn(*shape, generator=generator, dtype=dtype)
    z = K.lowrank_project(Us, y)
    assert relerr(z, Uw.T @ y) <= TOL[dtype]
    w = torch.randn(*((l,) if k is None else (l, k)), generator=generator, dtype=dtype)
    out = K.lowrank_expand(Us, w, 0.5, y)
    assert relerr(out, Uw @ w + 0.5 * y) <= TOL[dtype]
    with pytest.raises(ValueError, match="lowrank_project: expected"):
        K.lowrank_project(Us, y[:-1])
    with pytest.raises(ValueError, match="lowrank_expand: expected"):
        K.lowrank_expand(Us, w[:-1], 0.5, y)


def test_lowrank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected U"):
        K.lowrank_apply(torch.zeros(5, 2), torch.zeros(3), 0.0, torch.zeros(5))


# ---------------------------------------------------------------------------------------------
# fused LSMR update
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coef", ["tensor", "float"])
@pytest.mark.parametrize("m", [1, 1000])
def test_lsmr_update_matches_formulas(coef, m, dtype, generator):
    x, h, hbar, v = (torch.randn(m, generator=generator, dtype=torch.float64) for _ in range(4))
    a, b, c = 0.3, -1.7, 0.9
    hbar_ref = h + a * hbar
    x_ref = x + b * hbar_ref
    h_ref = v + c * h
    xs, hs, hbs, vs = (t.to(dtype).clone() for t in (x, h, hbar, v))
    co = [torch.tensor(q, dtype=dtype) for q in (a, b, c)] if coef == "tensor" else [a, b, c]
    sq = torch.zeros((), dtype=dtype)
    K.lsmr_update_(xs, hs, hbs, vs, *co, sqnorm_x=sq)
    assert relerr(hbs, hbar_ref) <= TOL[dtype]
    assert relerr(xs, x_ref) <= TOL[dtype]
    assert relerr(hs, h_ref) <= TOL[dtype]
    assert abs(float(sq) - float(x_ref @ x_ref)) <= TOL[dtype] * float(x_ref @ x_ref) * 4
    assert torch.equal(vs, v.to(dtype))  # v untouched


def test_lsmr_update_without_norm_keeps_signature(generator):
    x, h, hbar, v = (torch.randn(10, generator=generator) for _ in range(4))
    a, b, c = (torch.tensor(q) for q in (0.5, 2.0, -1.0))
    ex = x + b * (h + a * hbar)
    assert K.lsmr_update_(x, h, hbar, v, a, b, c) is None
    assert torch.equal(x, ex)


# ---------------------------------------------------------------------------------------------
# CUDA sources (CPU)
# ---------------------------------------------------------------------------------------------


def test_kernel_sources_present_and_self_contained():
    names = {p.name for p in CU_FILES}
    assert names == set(_registry.ENTRIES)
    for p in CU_FILES:
        text = p.read_text()
        # NVRTC (cupy.RawModule) gets no host include path: keep sources header-free
        assert not re.search(r"^\s*#\s*include", text, re.M), p.name
    assert _loader.kernel_dir() == KERNEL_DIR


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cuda_source_compiles(cu, tmp_path):
    """Each .cu compiles for sm_90 and its entry points are exactly the registry's."""
    ptx = tmp_path / (cu.stem + ".ptx")
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "--ptx", "-std=c++14", str(cu), "-o", str(ptx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    registered = _registry.names(cu.name)
    assert not registered - entries, f"{cu.name} lacks entry points {sorted(registered - entries)}"
    assert not entries - registered, (
        f"{cu.name}: unregistered entries {sorted(entries - registered)}"
    )


def test_import_does_not_import_cupy():
    code = "import sys, lsr_scale; print('cupy' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(KERNEL_DIR.parent),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------------------------
# GPU: each kernel against its torch fallback
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cuda_kernels(monkeypatch):
    pytest.importorskip("cupy")
    monkeypatch.delenv(K.DISABLE_ENV, raising=False)
    status = K.kernel_status()
    assert all(v == "cuda" for v in status.values()), status
    return torch.device("cuda")


def _fallback(fn, *args, **kwargs):
    """``fn`` on its torch path (CUDA kernels switched off in-process)."""
    with K.disabled():
        return fn(*args, **kwargs)


@pytest.mark.cuda
def test_gpu_disabled_switches_the_path(cuda_kernels):
    with K.disabled():
        assert set(K.kernel_status().values()) == {"torch (lsr_scale.cuda.disabled())"}
    assert set(K.kernel_status().values()) == {"cuda"}


@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 2, 64, 2048, 4096, 2**13, 2**17])
@pytest.mark.parametrize("k", [1, 3, 33, 100])
def test_gpu_fwht_matches_fallback(cuda_kernels, n, k, dtype, generator):
    if n * k > 2**22:
        pytest.skip("size")
    X = torch.randn(n, k, generator=generator, dtype=dtype).to(cuda_kernels)
    ref = _fallback(K.fwht_, X.clone())
    out = K.fwht_(X.clone())
    assert torch.equal(out, ref)  # same butterflies in the same stage order
    Xt = X.t().contiguous().t()  # non-contiguous input
    assert torch.equal(K.fwht_(Xt), ref)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "n,s,zeta,k",
    [(1, 1, 1, 1), (1000, 37, 8, 1), (5003, 129, 3, 33), (20011, 700, 8, 257), (3000, 64, 4, 5)],
)
def test_gpu_sparse_sign_matches_fallback_and_cpu_bits(
    cuda_kernels, n, s, zeta, k, dtype, generator
):
    indices, values = _sketch(n, s, zeta, generator, dtype)
    X = torch.randn(n, k, generator=generator, dtype=dtype)
    cpu = K.sparse_sign_apply(indices, values, X, s)
    ind_d, val_d, X_d = indices.cuda(), values.cuda(), X.cuda()
    ref = _fallback(K.sparse_sign_apply, ind_d, val_d, X_d, s)
    outs = []
    for _ in range(10):
        out = torch.full((s, k), float("nan"), dtype=dtype, device="cuda")
        K.sparse_sign_apply(ind_d, val_d, X_d, s, out=out)
        outs.append(out.clone())
    assert all(torch.equal(o, outs[0]) for o in outs)  # bit-identical across runs
    assert torch.equal(outs[0].cpu(), cpu)  # same order and rounding as the CPU reference
    assert relerr(outs[0], ref) <= TOL[dtype] * 10
    # S^T Y
    Y = torch.randn(s, k, generator=generator, dtype=dtype).cuda()
    reft = _fallback(K.sparse_sign_apply_t, ind_d, val_d, Y)
    outt = torch.full((n, k), float("nan"), dtype=dtype, device="cuda")
    K.sparse_sign_apply_t(ind_d, val_d, Y, out=outt)
    assert torch.equal(outt, reft)


@pytest.mark.cuda
@pytest.mark.parametrize("m,l", [(1, 1), (33, 7), (1000, 300), (100003, 301), (70001, 64)])
@pytest.mark.parametrize("store", ["same", torch.bfloat16, torch.float16])
def test_gpu_lowrank_matches_fallback(cuda_kernels, m, l, store, dtype, generator):
    if l > m:
        l = m
    U = torch.linalg.qr(torch.randn(m, l, generator=generator, dtype=torch.float64)).Q
    d = torch.rand(l, generator=generator, dtype=torch.float64) + 0.5
    y = torch.randn(m, generator=generator, dtype=torch.float64)
    Ud = U.to(dtype if store == "same" else store).cuda()
    dd, yd = d.to(dtype).cuda(), y.to(dtype).cuda()
    for c in (0.25, torch.tensor(0.25, dtype=dtype, device="cuda")):
        ref = _fallback(K.lowrank_apply, Ud, dd, c, yd)
        out = torch.full_like(yd, float("nan"))
        K.lowrank_apply(Ud, dd, c, yd, out=out)
        assert not out.isnan().any()
        assert relerr(out, ref) <= (1e-5 if dtype == torch.float32 else 1e-12)
        again = K.lowrank_apply(Ud, dd, c, yd)
        assert torch.equal(again, out)  # reproducible run to run


@pytest.mark.cuda
@pytest.mark.parametrize("m,l", [(1, 1), (1000, 300), (100003, 301)])
@pytest.mark.parametrize("store", ["same", torch.bfloat16])
def test_gpu_lowrank_passes_match_fallback(cuda_kernels, m, l, store, dtype, generator):
    l = min(l, m)
    U = torch.randn(m, l, generator=generator, dtype=torch.float64)
    y = torch.randn(m, generator=generator, dtype=torch.float64)
    w = torch.randn(l, generator=generator, dtype=torch.float64)
    Ud = U.to(dtype if store == "same" else store).cuda()
    yd, wd = y.to(dtype).cuda(), w.to(dtype).cuda()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    ref = _fallback(K.lowrank_project, Ud, yd)
    assert relerr(K.lowrank_project(Ud, yd), ref) <= tol
    ref = _fallback(K.lowrank_expand, Ud, wd, 0.5, yd)
    out = torch.full_like(yd, float("nan"))
    K.lowrank_expand(Ud, wd, 0.5, yd, out=out)
    assert not out.isnan().any()
    assert relerr(out, ref) <= tol


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 255, 257, 100003])
def test_gpu_lsmr_update_bit_identical(cuda_kernels, m, dtype, generator):
    vecs = [torch.randn(m, generator=generator, dtype=dtype).cuda() for _ in range(4)]
    coefs = [torch.tensor(q, dtype=dtype, device="cuda") for q in (0.3, -1.7, 0.9)]
    ref = [t.clone() for t in vecs]
    sq_ref = torch.zeros((), dtype=dtype, device="cuda")
    _fallback(K.lsmr_update_, *ref, *coefs, sqnorm_x=sq_ref)
    got = [t.clone() for t in vecs]
    sq = torch.full((), float("nan"), dtype=dtype, device="cuda")
    K.lsmr_update_(*got, *coefs, sqnorm_x=sq)
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
    assert abs(float(sq) - float(sq_ref)) <= 1e-5 * float(sq_ref) + 1e-30
    got2 = [t.clone() for t in vecs]
    K.lsmr_update_(*got2, 0.3, -1.7, 0.9)  # python-number coefficients
    for g, r in zip(got2, ref):
        assert torch.equal(g, r)


@pytest.mark.cuda
def test_gpu_kernels_follow_torch_stream(cuda_kernels, generator):
    """Launches go to torch's current stream: results are ordered with torch ops on it."""
    X = torch.randn(2**16, 8, generator=generator).cuda()
    expected = K.fwht_(X.clone())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        Y = X.clone()
        K.fwht_(Y)
        Z = Y * 1.0
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(Z, expected)
