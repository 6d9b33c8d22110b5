"""Planning: ls.plan, the memory budget, the adaptations refine makes, the streamed Nystrom
build they rely on, and the device-aware precision of Krylov."""

from __future__ import annotations

import ast
import importlib
import math
import warnings
from pathlib import Path

import pytest
import torch

import lsr_scale as ls
from lsr_scale.precond import Nystrom, NystromPreconditioner
from lsr_scale.randomized import lowrank_gram, lowrank_gram_streamed
from lsr_scale.refine._krylov import fast_float64
from lsr_scale.refine._plan import BUDGET_SHARE, HEADROOM, default_budget, plan_problem

L = torch.nn.Linear


def _mlp(width=64, rows=300, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(L(2, width), torch.nn.Tanh(), L(width, width), torch.nn.Tanh(),
                              L(width, 1)).to(dtype)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, 2, generator=g) * 2 - 1).to(dtype)
    y = torch.sin(math.pi * x[:, :1]) * torch.cos(x[:, 1:])
    return net, (x, y)


# ---------------------------------------------------------------------- the layering
def test_the_memory_layer_knows_no_method():
    """_memory sits below the methods: it imports none of them (no import cycle)."""
    memory = importlib.import_module("lsr_scale.refine._memory")

    src = Path(memory.__file__).parent
    for name in ("_memory.py", "_plan.py", "_sample_space.py"):
        tree = ast.parse((src / name).read_text())
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"_krylov", "_subspace", "_refine"}, (name, imported)


# ---------------------------------------------------------------------- ls.plan
def test_plan_allocates_nothing_and_refine_runs_the_same_plan():
    net, data = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    for method in ("subspace", "krylov"):
        p = ls.plan(net, data=data, method=method, memory_budget=1e9)
        assert isinstance(p, ls.Plan) and p.fits and p.adapted == ()
        assert p.peak_bytes == sum(p.parts.values()) and p.budget == 10**9
        assert "estimated peak" in p.describe()
        r = ls.refine(net, data=data, method=method, memory_budget=1e9,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert r.info["memory_estimate"] == p.parts and r.info["adapted"] == []
        assert r.info["settings"] == p.method
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_plan_refuses_what_cannot_fit_naming_the_estimate():
    net, data = _mlp()
    with pytest.raises(MemoryError, match=r"estimated peak of .* with a budget of 0\.0 MB"):
        ls.plan(net, data=data, method="krylov", memory_budget=10)
    with pytest.raises(ValueError, match="memory_budget: expected a positive number"):
        ls.plan(net, data=data, memory_budget=-1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=50)
    with pytest.raises(ValueError, match="plan: expected data=.* got a DataLoader"):
        ls.plan(net, data=loader)


def test_the_default_budget_is_half_of_what_is_free():
    assert BUDGET_SHARE == 0.5
    assert default_budget(free=80 * 10**9) == 40 * 10**9
    assert 0 < default_budget("cpu") < 2**62


# ---------------------------------------------------------------------- adaptation
def _sizes(**over):
    kw = dict(m=10**6, n=1000, rows=1000, act_row=2e4, dtype=torch.float32,
              product_dtype=torch.float64, device="cpu", products=ls.Products())  # fmt: skip
    kw.update(over)
    return kw


def test_krylov_adapts_basis_storage_then_rank_in_order():
    dense = ls.Krylov(preconditioner=Nystrom(basis_dtype=torch.float64))
    full = plan_problem(dense, budget=10**12, **_sizes())
    assert full.adapted == () and full.parts["build"] >= 2 * 10**6 * 310 * 8
    # a budget the float32 streamed basis fits (the plan fills HEADROOM of it): only the
    # first lever
    p1 = plan_problem(dense, budget=int(2.2e9), **_sizes())
    assert [c["setting"] for c in p1.adapted] == ["Krylov.preconditioner (Nystrom basis)"]
    spec = p1.method.preconditioner
    assert spec.basis_dtype == torch.float32 and spec.is_streamed(torch.float64)
    assert spec.rank == 300 and p1.peak_bytes <= HEADROOM * 2.2e9
    # tighter: the rank comes down to the largest that fits
    p2 = plan_problem(dense, budget=int(1.0e9), **_sizes())
    assert [c["setting"] for c in p2.adapted][-1] == "Krylov.preconditioner.rank"
    r = p2.method.preconditioner.rank
    assert 1 <= r < 300 and p2.peak_bytes <= HEADROOM * 1.0e9 and p2.budget == int(1.0e9)
    bigger = ls.Krylov(preconditioner=Nystrom(rank=r + 1, basis_dtype=torch.float32))
    assert plan_problem(bigger, budget=10**12, **_sizes()).peak_bytes > HEADROOM * 1.0e9
    assert all(c["reason"] for c in p2.adapted)


def test_subspace_adapts_its_rank():
    # the default route holds one m x (k + p) block: its SVD runs in place
    p0 = plan_problem(ls.Subspace(), budget=10**12, **_sizes())
    assert p0.adapted == () and p0.parts["basis"] == 10**6 * 260 * 8
    p1 = plan_problem(ls.Subspace(), budget=int(1.2e9), **_sizes())
    assert [c["setting"] for c in p1.adapted] == ["Subspace.rank"]
    assert p1.method.rank < 250 and p1.method.range_finder == "dense"
    assert p1.peak_bytes <= HEADROOM * 1.2e9
    bigger = ls.Subspace(rank=p1.method.rank + 1)
    assert plan_problem(bigger, budget=10**12, **_sizes()).peak_bytes > HEADROOM * 1.2e9
    # rank="auto": its largest candidates come down
    p3 = plan_problem(ls.Subspace(rank="auto"), budget=int(1.2e9), **_sizes())
    assert [c["setting"] for c in p3.adapted] == ["Subspace.rank_candidates"]
    assert max(p3.method.rank_candidates) < 250 and p3.peak_bytes <= HEADROOM * 1.2e9


def test_a_plan_estimates_other_settings_at_its_own_sizes():
    """Plan.estimate / within_budget (what Subspace(rank="auto") asks before a rescan at a
    larger rank): the plan's own method gives its own estimate; a plan survives pickling."""
    import pickle

    p = plan_problem(ls.Subspace(), budget=int(1.2e9), **_sizes())
    assert p.estimate(p.method).total == p.peak_bytes and p.within_budget(p.method)
    k = p.method.rank
    assert not p.within_budget(ls.Subspace(rank=2 * k))
    assert p.estimate(ls.Subspace(rank=2 * k)).total > p.peak_bytes
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.estimate(q.method).total == p.peak_bytes


def test_the_product_batch_comes_down_before_any_setting():
    p = plan_problem(ls.Krylov(), budget=int(2.5e9), **_sizes())
    assert p.adapted == () and p.products.batch_size < 64
    assert any("product batch" in n for n in p.notes)


def test_refine_warns_once_and_records_what_it_adapted():
    net, data = _mlp(width=64, rows=400)
    one = ls.Products(batch_size=1)  # the product batch cannot absorb the cut
    full = ls.plan(net, data=data, method="krylov", products=one)
    tight = full.peak_bytes - full.parts["basis"] // 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ls.refine(net, data=data, method="krylov", memory_budget=tight, products=one,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    msgs = [str(w.message) for w in caught if "memory budget" in str(w.message)]
    assert len(msgs) == 1 and "Krylov.preconditioner.rank" in msgs[0]
    assert r.info["adapted"][0]["setting"] == "Krylov.preconditioner.rank"
    change = r.info["adapted"][0]
    assert change["from"] == 200 and r.info["preconditioner"]["rank"] == change["to"] < 200
    # the adapted refine still refines
    x, y = data
    assert (r(x) - y).norm() < 0.5 * (net(x) - y).norm()


def test_a_budget_below_the_cache_recomputes_row_chunks_with_the_same_result():
    """When the cached activations of all rows do not fit, the plan keeps no cache and takes
    the rows in chunks (no setting that changes the result is adapted), and the refine
    equals the unbudgeted, cached one to rounding (float64, damped: well determined)."""
    net, data = _mlp(width=32, rows=2000, dtype=torch.float64)
    meth = ls.Krylov(preconditioner=Nystrom(rank=20, streamed=True), damp=1e-2, maxiter=40,
                     stall=None)  # fmt: skip
    full = ls.plan(net, data=data, method=meth, memory_budget=1e12)
    assert full.products.cache is True and full.products.chunk_size is None
    tight = int(0.9 * full.parts["cache"])  # the cache alone does not fit
    p = ls.plan(net, data=data, method=meth, memory_budget=tight)
    assert p.fits and p.adapted == () and p.method == meth
    assert p.products.cache is False and p.parts["cache"] == 0
    assert p.products.chunk_size < 2000
    assert any("no cache" in n for n in p.notes) and any("chunks of" in n for n in p.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing adapted: no warning
        warnings.filterwarnings("ignore", "Krylov: stopped at maxiter")
        ref = ls.refine(net, data=data, method=meth, memory_budget=1e12,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
        r = ls.refine(net, data=data, method=meth, memory_budget=tight,
                      generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert r.info["products"] == p.products and r.info["memory_estimate"] == p.parts
    assert r.info["plan_notes"] == list(p.notes)
    assert ref.info["products"].cache is True
    assert torch.allclose(r.delta, ref.delta, rtol=0, atol=1e-9 * float(ref.delta.norm()))
    assert math.isclose(r.info["loss_linearized"], ref.info["loss_linearized"], rel_tol=1e-9)
    # cache=True given: the plan may not drop it, and refuses; cache=False given: kept
    with pytest.raises(MemoryError):
        ls.plan(net, data=data, method=meth, memory_budget=tight,
                products=ls.Products(cache=True))  # fmt: skip
    q = ls.plan(net, data=data, method=meth, memory_budget=1e12, products=ls.Products(cache=False))
    assert q.products.cache is False and q.parts["cache"] == 0
    with pytest.raises(TypeError, match="Products.cache"):
        ls.Products(cache="no")


def test_residual_fn_problems_are_planned_too():
    net, (x, y) = _mlp(rows=200)
    theta0 = dict(net.named_parameters())

    def residual(p):
        return (torch.func.functional_call(net, p, (x,)) - y).reshape(-1)

    p = ls.plan(net, residual_fn=residual, method="krylov", memory_budget=1e9)
    assert p.sizes["n"] == 200 and p.parts["cache"] > 0

    # a residual with torch.func transforms inside: activations cannot be counted, and
    # the plan says so
    def pinn(p):
        def u(pt):
            return torch.func.functional_call(net, p, (pt[None],)).reshape(())

        return torch.vmap(lambda pt: torch.func.grad(u)(pt).sum())(x)

    q = ls.plan(net, residual_fn=pinn, method="krylov", memory_budget=1e9)
    assert any("activations not counted" in n for n in q.notes)
    assert all(v is theta0[k] for k, v in net.named_parameters())


# ---------------------------------------------------------------------- streamed build
def _spectrum_operator(n=300, m=200, decay=-8, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    s = torch.logspace(0, decay, m, dtype=torch.float64)
    if rank is not None:
        s[rank:] = 0
    U, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return (U * s) @ V.T, s


def test_streamed_build_matches_the_dense_one():
    # rank 45 < rank + oversample = 50: both builds capture the range exactly (to rounding),
    # over eight decades of singular values
    A, s = _spectrum_operator(decay=-8 * 200 / 45, rank=45)
    U, lam, info = lowrank_gram_streamed(A, 40, generator=torch.Generator().manual_seed(1),
                                         block_size=7)  # fmt: skip
    Ud, lamd, _ = lowrank_gram(A, 40, generator=torch.Generator().manual_seed(1))
    assert U.shape == (200, 40) and info["rank"] == 40
    assert torch.allclose(lam.sqrt(), s[:40], rtol=1e-7)
    assert torch.allclose(lam, lamd, rtol=1e-7)
    assert torch.allclose(U @ U.T, Ud @ Ud.T, atol=1e-6)  # the same subspace
    assert float((U.T @ U - torch.eye(40, dtype=torch.float64)).abs().max()) < 1e-10
    # the block size does not change the draws (only the products' rounding)
    U2, lam2, _ = lowrank_gram_streamed(A, 40, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(U, U2, atol=1e-9) and torch.allclose(lam, lam2, rtol=1e-12)


def test_streamed_preconditioner_in_float32_storage_clusters_like_the_dense_one():
    A, _ = _spectrum_operator()
    dense = NystromPreconditioner(A, 60, generator=torch.Generator().manual_seed(0))
    st = NystromPreconditioner(A, 60, generator=torch.Generator().manual_seed(0),
                               streamed=True, basis_dtype=torch.float32)  # fmt: skip
    assert st.blocks[-1].dtype == torch.float32 and st.basis_nbytes == 200 * 60 * 4
    assert st.rank_full_precision == 0 and st.gamma < 1e-5
    eye = torch.eye(200, dtype=torch.float64)

    def kappa_top(M):  # spread of the clustered part: sigma_1 / sigma_60 of A M
        sv = torch.linalg.svdvals(A @ M.matmat(eye))
        return float(sv[0] / sv[59])

    assert kappa_top(st) < 1.5 * kappa_top(dense) and kappa_top(st) < 3
    # truncation and a new damping work on the stored basis (no working-precision copy)
    st.set_damp(1e-3)
    assert st.truncate(1e-2) < 60 and st.blocks[-1].dtype == torch.float32


def test_streamed_spec_rules():
    assert Nystrom(basis_dtype=torch.float32).is_streamed(torch.float64)
    assert not Nystrom().is_streamed(torch.float64)
    assert not Nystrom(basis_dtype=torch.float32, power_iters=1).is_streamed(torch.float64)
    with pytest.raises(ValueError, match="Nystrom.streamed: builds from one randomized SVD"):
        Nystrom(streamed=True, method="nystrom")
    with pytest.raises(TypeError, match="Nystrom.streamed: expected True, False or None"):
        Nystrom(streamed="yes")


def test_krylov_default_stores_a_float32_models_basis_in_float32():
    net, data = _mlp(rows=400)
    r = ls.refine(net, data=data, method="krylov", generator=torch.Generator().manual_seed(0))
    pc = r.info["preconditioner"]
    assert pc["basis_dtype"] == "float32" and pc["streamed"] is True
    assert r.info["precision_choice"]["precision"] == "float64"
    # products ran in float64; the network it returns is in the model's float32
    net2 = r.to_network()
    assert all(p.dtype == torch.float32 for p in net2.parameters())
    x, _ = data
    with torch.no_grad():
        moved = max(float((a - b).abs().max()) for a, b in zip(net2.parameters(), net.parameters()))
    assert moved > 0 and net2(x).dtype == torch.float32
    net64, data64 = _mlp(rows=400, dtype=torch.float64)
    r64 = ls.refine(net64, data=data64, method="krylov",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r64.info["preconditioner"]["basis_dtype"] == "float64"
    assert r64.info["preconditioner"]["streamed"] is False


# ---------------------------------------------------------------------- precision
def test_precision_auto_is_device_aware(monkeypatch):
    assert fast_float64("cpu")[0]
    k = ls.Krylov()
    assert k.product_dtype(torch.float32, has_data=True, device="cpu") == torch.float64
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "RTX 3090")
    fast, why = fast_float64("cuda")
    assert not fast and "1/32-1/64" in why and "sm_86" in why
    assert k.product_dtype(torch.float32, has_data=True, device="cuda") is None
    choice = k.precision_choice(torch.float32, has_data=True, device="cuda")
    assert choice["precision"] == "mixed"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "H100")
    assert k.product_dtype(torch.float32, has_data=True, device="cuda") == torch.float64
    assert ls.Krylov(precision="mixed").precision_choice(torch.float32, has_data=True) == {
        "precision": "mixed", "reason": "given"}  # fmt: skip


def test_a_budget_below_the_basis_lowers_the_rank_after_dropping_the_cache():
    """When even without the cache the preconditioner does not fit, the plan lowers its rank
    (chosen at row chunks of 64 rows, then the largest chunk that fits); before, the rank
    lever was tried only while the cache was still counted, and the plan raised."""
    net, data = _mlp(width=32, rows=2000, dtype=torch.float64)
    meth = ls.Krylov(preconditioner=Nystrom(rank=200, streamed=True), maxiter=30, stall=None)
    least = ls.Products(cache=False, chunk_size=1, batch_size=1)  # the least rows can take
    free = ls.plan(net, data=data, method=meth, memory_budget=1e12, products=least)
    spec = free.method.preconditioner
    tight = int(free.peak_bytes - 0.5 * free.parts["basis"])  # half the basis must go
    p = ls.plan(net, data=data, method=meth, memory_budget=tight)
    assert p.fits and p.products.cache is False
    assert [c["setting"] for c in p.adapted] == ["Krylov.preconditioner.rank"]
    low = p.method.preconditioner.rank
    assert 1 <= low < spec.rank and p.adapted[0]["to"] == low
    assert p.products.chunk_size == 62  # halving 2000 rows: the first chunk under 64 rows
    with pytest.warns(RuntimeWarning, match="adapted"):
        warnings.filterwarnings("ignore", "Krylov: stopped at maxiter")
        r = ls.refine(net, data=data, method=meth, memory_budget=tight,
                      generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert r.info["preconditioner"]["rank"] == low
    assert [c["to"] for c in r.info["adapted"]] == [low]
    assert r.info["loss_linearized"] < r.info["loss_before"]
