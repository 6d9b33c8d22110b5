"""Method objects: self-validation, inapplicable settings refused before work, the 0.1 shim."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import lsr_scale as ls
from lsr_scale.models import MLP
from lsr_scale.precond import Auto, Jacobi, Nystrom, Sketch


def _problem(seed=0, n=60):
    torch.manual_seed(seed)
    model = MLP((2, 6, 6, 1)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(2 * x[:, :1]) * x[:, 1:]
    return model, x, y


# ---------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ls.Subspace(rank=0), r"Subspace.rank: expected a positive int or 'auto', got 0"),
        (lambda: ls.Subspace(rank=2.5), "Subspace.rank"),
        (lambda: ls.Subspace(rank=True), "Subspace.rank"),
        (lambda: ls.Subspace(oversample=-1), "Subspace.oversample"),
        (lambda: ls.Subspace(subspace="input"), "Subspace.subspace"),
        (lambda: ls.Subspace(reduced="qr"), "Subspace.reduced"),
        (lambda: ls.Subspace(rank=5, rank_candidates=[2, 3]), "applies to rank='auto' only"),
        (lambda: ls.Subspace(rank="auto", rank_candidates=[]), "at least one rank"),
        (lambda: ls.Subspace(rank="auto", rank_candidates=[0, 3]), "rank_candidates"),
        (lambda: ls.Subspace(subspace_inputs=torch.zeros(3, 2)), "subspace='output' only"),
        (lambda: ls.Subspace(reduced="dense", reduced_maxiter=5), "with reduced='dense'"),
        (lambda: ls.Subspace(reduced="dense", reduced_atol=1e-3), "with reduced='dense'"),
        (lambda: ls.Subspace(reduced="lsmr", max_dense_bytes=10), "decides reduced='auto' only"),
        (lambda: ls.Subspace(rank="auto", reduced="lsmr"), "expected reduced='auto' or 'dense'"),
        (lambda: ls.Krylov(solver="gmres"), "Krylov.solver"),
        (lambda: ls.Krylov(damp=-1.0), "Krylov.damp"),
        (lambda: ls.Krylov(maxiter=-1), "Krylov.maxiter"),
        (lambda: ls.Krylov(atol=-1e-3), "Krylov.atol"),
        (lambda: ls.Krylov(conlim=0), "Krylov.conlim"),
        (lambda: ls.Krylov(space="both"), "Krylov.space"),
        (lambda: ls.Krylov(preconditioner="ilu"), "Krylov.preconditioner"),
        (lambda: ls.Krylov(space="sample", btol=1e-3), "Krylov.btol: applies to space='param"),
        (lambda: ls.Krylov(space="auto", conlim=1e3), "Krylov.conlim: applies to space='par"),
        (lambda: ls.Krylov(space="sample", solver="lsqr"), "Krylov.solver: applies"),
        (lambda: ls.Krylov(space="sample", preconditioner="jacobi"), "takes a Nystrom"),
        (lambda: ls.Krylov(space="auto", preconditioner=Sketch()), "takes a Nystrom"),
        (lambda: ls.Products(jvp="reverse"), "Products.jvp"),
        (lambda: ls.Products(batch_size=0), "Products.batch_size"),
        (lambda: ls.Products(chunk_size=-5), "Products.chunk_size"),
        (lambda: Nystrom(rank=0), "Nystrom.rank"),
        (lambda: Nystrom(method="exact"), "Nystrom.method"),
        (lambda: Nystrom(basis_dtype=torch.int8), "Nystrom.basis_dtype"),
        (lambda: Sketch(sketch="fourier"), "Sketch.sketch"),
        (lambda: Jacobi(method="diag"), "Jacobi.method"),
        (lambda: Auto(nystrom="nystrom"), "Auto.nystrom: expected a Nystrom"),
    ],
)
def test_objects_validate_themselves(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_objects_are_frozen_and_shorthands_resolve():
    k = ls.Krylov()
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.maxiter = 3
    assert isinstance(k.preconditioner, Auto)
    assert isinstance(ls.Krylov(preconditioner="nystrom").preconditioner, Nystrom)
    assert ls.Krylov(preconditioner=None).preconditioner is None
    assert k.setting("maxiter") == 300 and k.setting("solver") == "lsmr"
    assert ls.Krylov(space="auto").resolved_space((10, 100)) == "sample"
    assert ls.Krylov(space="auto").resolved_space((100, 100)) == "parameter"
    assert Auto().choose((1000, 50)) == Sketch() and Auto().choose((100, 50)) == Nystrom()
    assert Nystrom().resolved_rank((2000, 900)) == 300
    assert Nystrom().resolved_rank((40, 900)) == 20
    assert ls.Subspace(rank="auto", rank_candidates=[3, 5]).rank_candidates == (3, 5)


# ---------------------------------------------------------------------- refusals before work
class _Counting(torch.nn.Module):
    """Counts forward calls, so a test can prove that no work ran before a refusal."""

    def __init__(self):
        super().__init__()
        self.net = MLP((2, 5, 1)).double()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method=ls.Krylov(), validation="v"), "validation: expected a pair"),
        (dict(method=ls.Subspace(rank=3), validation="v"), "validation: not used by"),
        (dict(method=ls.Subspace(rank="auto")), "validation: expected"),
        (dict(method="newton"), "method: expected 'subspace', 'krylov'"),
        (dict(method=ls.Subspace), "got the class Subspace"),
        (dict(products={"batch_size": 4}), "products: expected ls.Products"),
        (dict(generator=0), "generator: expected a torch.Generator"),
        (dict(method=ls.Subspace(rank="auto"), validation=(1, 2, 3)), "validation: expected a"),
    ],
)
def test_refine_refuses_before_any_work(kwargs, match):
    model = _Counting()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 2, generator=g, dtype=torch.float64)
    y = torch.rand(20, 1, generator=g, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        ls.refine(model, data=(x, y), **kwargs)
    assert model.calls == 0


def test_chunk_size_with_residual_fn_and_output_subspace_without_inputs_refused():
    model = _Counting()
    with pytest.raises(ValueError, match="Products.chunk_size: applies to data="):
        ls.refine(model, residual_fn=lambda p: p, products=ls.Products(chunk_size=4))
    with pytest.raises(ValueError, match="subspace_inputs: expected model inputs"):
        ls.refine(model, residual_fn=lambda p: p, method=ls.Subspace(subspace="output"))
    assert model.calls == 0


def test_validation_converted_with_dtype():
    """float32 validation data with dtype=float64 is converted like the training data."""
    model, x, y = _problem()
    model = model.float()
    xv, yv = x[:20].float(), y[:20].float()
    r = ls.refine(
        model,
        data=(x.float(), y.float()),
        method=ls.Subspace(rank="auto", rank_candidates=[4, 8]),
        validation=(xv, yv),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert r.info["rank"] in (4, 8) and r.info["dtype"] == "torch.float64"


# ---------------------------------------------------------------------- info and maxiter=0
def test_info_is_built_by_the_method():
    model, x, y = _problem()
    r = ls.refine(model, data=(x, y), method=ls.Krylov(maxiter=5, preconditioner=Nystrom(rank=4)))
    info = r.info
    assert info["method"] == "krylov" and info["settings"] == ls.Krylov(
        maxiter=5, preconditioner=Nystrom(rank=4)
    )
    assert info["preconditioner"]["name"] == "nystrom" and info["preconditioner"]["rank"] == 4
    assert info["iterations"] == info["solver"].itn <= 5
    assert set(info["times"]) >= {"linearize", "precond_build", "solve", "check", "total"}
    s = ls.refine(model, data=(x, y), method=ls.Subspace(rank=4))
    assert set(s.info["times"]) >= {"linearize", "range_finder", "reduced", "check", "total"}
    assert s.info["rank"] == 4 and s.info["reduced_solver"] == "dense"


def test_maxiter_zero_means_zero_iterations():
    """0.1 turned maxiter=0 into 1,000 iterations on the reduced LSMR path."""
    model, x, y = _problem()
    k = ls.refine(model, data=(x, y), method=ls.Krylov(maxiter=0, preconditioner=None))
    assert k.info["iterations"] == 0 and torch.count_nonzero(k.delta) == 0
    s = ls.refine(model, data=(x, y), method=ls.Subspace(rank=5, reduced="lsmr", reduced_maxiter=0))
    assert s.info["solver"].itn == 0 and torch.count_nonzero(s.delta) == 0


def test_krylov_lsqr_and_sample_space_reach_the_lstsq_solution():
    from torch.func import functional_call, jacrev

    model, x, y = _problem(n=30)  # 30 rows, 61 parameters: wide
    params = {k: v.detach() for k, v in model.named_parameters()}

    def res(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    jac = jacrev(res)(params)
    G = torch.cat([jac[k].reshape(30, -1) for k in params], dim=1)
    damp = 0.05  # the damped solution is unique and well conditioned: [G; damp I] lstsq
    stacked = torch.cat([G, damp * torch.eye(G.shape[1], dtype=G.dtype)])
    rhs = torch.cat([-res(params), torch.zeros(G.shape[1], dtype=G.dtype)])
    ref = torch.linalg.lstsq(stacked, rhs[:, None]).solution[:, 0]
    lsqr = ls.refine(
        model,
        data=(x, y),
        method=ls.Krylov(
            solver="lsqr", preconditioner=None, damp=damp, atol=1e-14, btol=1e-14, maxiter=2000
        ),
    )
    assert lsqr.info["solver"].itn > 0
    torch.testing.assert_close(lsqr.delta, ref, rtol=1e-6, atol=1e-8)
    sample = ls.refine(
        model,
        data=(x, y),
        method=ls.Krylov(space="auto", damp=damp, atol=1e-13, maxiter=300),
        generator=torch.Generator().manual_seed(0),
    )
    assert sample.info["space"] == "sample"
    assert sample.info["preconditioner"]["name"] == "nystrom"
    torch.testing.assert_close(sample.delta, ref, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------- the 0.1 keywords
def test_legacy_keywords_warn_with_the_new_call_and_give_identical_results():
    model, x, y = _problem()
    new = ls.refine(
        model,
        data=(x, y),
        method=ls.Subspace(rank=7, oversample=4),
        products=ls.Products(batch_size=8),
        generator=torch.Generator().manual_seed(1),
    )
    with pytest.warns(DeprecationWarning, match=r"method=ls.Subspace\(rank=7, oversample=4\)"):
        old = ls.refine(
            model,
            data=(x, y),
            rank=7,
            oversample=4,
            batch_size=8,
            generator=torch.Generator().manual_seed(1),
        )
    assert torch.equal(new.delta, old.delta)
    with pytest.warns(DeprecationWarning, match=r"Auto\(nystrom=Nystrom\(rank=6"):
        old_k = ls.refine(
            model,
            data=(x, y),
            method="krylov",
            preconditioner="auto",
            precond_rank=6,
            maxiter=4,
            generator=torch.Generator().manual_seed(2),
        )
    new_k = ls.refine(
        model,
        data=(x, y),
        method=ls.Krylov(preconditioner=Auto(nystrom=Nystrom(rank=6)), maxiter=4),
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(new_k.delta, old_k.delta)
    assert old_k.info["preconditioner"]["rank"] == 6


def test_legacy_keywords_that_never_applied_are_refused():
    model, x, y = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="precond_rank: does not apply to method='subspace'"):
            ls.refine(model, data=(x, y), precond_rank=5)
        with pytest.raises(TypeError, match="rank: does not apply to method='krylov'"):
            ls.refine(model, data=(x, y), method="krylov", rank=5)
        with pytest.raises(TypeError, match="put every setting on the method object"):
            ls.refine(model, data=(x, y), method=ls.Subspace(), rank=5)
        with pytest.raises(TypeError, match="unexpected keyword argument 'ranks'"):
            ls.refine(model, data=(x, y), ranks=5)
        with pytest.raises(TypeError, match="precond_rank: applies to the Nystrom"):
            ls.refine(model, data=(x, y), method="krylov", preconditioner="jacobi", precond_rank=3)


def test_solve_reduced_retries_a_float32_svd_that_does_not_converge(monkeypatch):
    """LAPACK's float32 SVD can fail to converge (seen with MKL): float64 then, warned."""
    from lsr_scale.refine import solve_reduced

    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 8, generator=g)
    b = torch.randn(50, generator=g)
    svd = torch.linalg.svd

    def flaky(M, *a, **kw):
        if M.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return svd(M, *a, **kw)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    with pytest.warns(RuntimeWarning, match="computed in float64 instead"):
        c = solve_reduced(A, b)
    ref = torch.linalg.lstsq(A.double(), b.double()[:, None]).solution[:, 0]
    assert c.dtype == torch.float32 and torch.allclose(c.double(), ref, atol=1e-5)
    with pytest.raises(torch.linalg.LinAlgError):  # float64 has nothing to fall back to
        monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: flaky(a[0].float()))
        solve_reduced(A.double(), b.double())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_nested_lstsq_matches_the_truncated_svd_of_each_prefix(dtype, tol):
    """The rank scan's solver: one QR for every column prefix, the same solutions as
    solve_reduced on each; when R's diagonal spans more than 1 / rcond (where the SVD drops
    directions) it solves each prefix by solve_reduced itself."""
    from lsr_scale.refine._subspace import NestedLstsq, solve_reduced

    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 40, generator=g, dtype=torch.float64)
    A = A * torch.logspace(0, -2, 40, dtype=torch.float64)  # columns of decaying scale
    b = torch.randn(300, generator=g, dtype=torch.float64)
    A, b = A.to(dtype), b.to(dtype)
    nested = NestedLstsq(A, b)
    assert nested.qr
    for k in (1, 7, 25, 40):
        ref = solve_reduced(A[:, :k].double(), b.double(), rcond=1e-14)
        torch.testing.assert_close(nested.solve(k).double(), ref, rtol=tol, atol=tol)
    # a column that repeats an earlier one: rank deficient, so the truncated SVD decides
    bad = torch.cat([A[:, :10], A[:, 3:4]], dim=1)
    nested = NestedLstsq(bad, b)
    assert not nested.qr
    assert torch.equal(nested.solve(11), solve_reduced(bad, b))


def test_rank_auto_warns_when_the_best_rank_is_the_largest_candidate():
    """A scan of the caller's candidates whose best validation error is at the largest says
    that a larger rank may be better (pointing at the caller's line) and does not rescan;
    an interior best is quiet."""
    model, x, y = _problem()
    method = ls.Subspace(rank="auto", rank_candidates=[2, 4, 8])
    with pytest.warns(UserWarning, match=r"largest rank scanned, 8.*rank_candidates=") as rec:
        r = ls.refine(model, data=(x, y), method=method, validation=(x[:20], y[:20]),
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    (ours,) = [w for w in rec if "largest rank scanned" in str(w.message)]
    assert r.info["rank"] == 8 and ours.filename == __file__ and r.info["svd_ranks"] == [8]
    scan = {s["rank"]: s["val_rel_l2"] for s in r.info["rank_scan"]}
    assert scan[8] < min(scan[2], scan[4])
    # validation targets that are the network's own outputs: every refinement (fitted to
    # noise) moves away from them, so the smallest candidate is best
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(y.shape, generator=g, dtype=y.dtype)
    with torch.no_grad():
        own = model(x[:20])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*largest rank scanned")
        q = ls.refine(model, data=(x, noise), method=method, validation=(x[:20], own),
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert q.info["rank"] < 8


def _teacher_problem():
    """A 16-parameter MLP (default rank 16 // 4 = 4) and data from the same network with
    perturbed weights: its linearization fits them better at every larger rank."""
    torch.manual_seed(0)
    model, teacher = MLP((3, 3, 1)).double(), MLP((3, 3, 1)).double()
    teacher.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        x, xv = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1 for n in (200, 100))
        return model, (x, teacher(x)), (xv, teacher(xv))


def test_rank_auto_rescans_at_twice_the_rank_up_to_the_least_squares_solution():
    """With its default candidates, a best at the largest rank rescans at twice the rank
    (ranks k, 1.5k, 2k of a new randomized SVD); here 4 -> 8 -> 16 = min(n, m), where the
    subspace is all of parameter space and delta is the dense least-squares solution."""
    from torch.func import functional_call, jacrev

    model, (x, y), val = _teacher_problem()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*largest rank scanned")
        r = ls.refine(model, data=(x, y), method=ls.Subspace(rank="auto"), validation=val,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.info["svd_ranks"] == [4, 8, 16] and r.info["rank"] == 16
    scan = r.info["rank_scan"]
    assert [(s["svd_rank"], s["rank"]) for s in scan] == [
        (4, 1), (4, 2), (4, 4), (8, 4), (8, 6), (8, 8), (16, 8), (16, 12), (16, 16)
    ]  # fmt: skip
    assert scan[-1]["val_rel_l2"] < scan[5]["val_rel_l2"] < scan[2]["val_rel_l2"]
    # what ran was larger than planned: info holds the plan's estimate of the last rescan
    at_16 = ls.Subspace(rank="auto", rank_candidates=(16,))
    plan = ls.plan(model, data=(x, y), method=ls.Subspace(rank="auto"))
    assert r.info["memory_estimate"] == plan.estimate(at_16).parts != plan.parts
    # ls.plan says beforehand which rescans the budget allows
    assert any("it rescans at rank 8, then 16 (they fit)" in n for n in plan.notes)
    assert [n.split(":")[0] for n in r.info["plan_notes"][-2:]] == [
        f"Subspace(rank='auto') rescanned at rank {k}" for k in (8, 16)
    ]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def res(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    jac = jacrev(res)(params)
    G = torch.cat([jac[k].reshape(len(x), -1) for k in params], dim=1)
    ref = torch.linalg.lstsq(G, -res(params)[:, None]).solution[:, 0]
    torch.testing.assert_close(r.delta, ref, rtol=1e-7, atol=1e-9)


def test_ctrl_c_in_a_rescan_keeps_the_best_of_the_scans_before_it(monkeypatch):
    """A KeyboardInterrupt while a rescan builds its larger basis returns the refinement of
    the scans before it (the first scan's best rank here), with a warning, as a Ctrl-C in
    a scan keeps the best rank so far."""
    from lsr_scale.refine import _subspace

    model, data, val = _teacher_problem()
    auto = ls.Subspace(rank="auto")
    orig, calls = _subspace.randomized_svd, {"n": 0}

    def svd(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the rescan's randomized SVD
            raise KeyboardInterrupt
        return orig(*args, **kwargs)

    monkeypatch.setattr(_subspace, "randomized_svd", svd)
    with pytest.warns(RuntimeWarning, match="rank 8 was interrupted.*before it, 4") as rec:
        r = ls.refine(model, data=data, method=auto, validation=val,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [w.filename for w in rec if "interrupted" in str(w.message)] == [__file__]
    assert r.info["interrupted"] is True and r.info["rank"] == 4 and r.info["svd_ranks"] == [4]
    assert [s["rank"] for s in r.info["rank_scan"]] == [1, 2, 4]
    monkeypatch.setattr(_subspace, "randomized_svd", orig)
    given = ls.Subspace(rank="auto", rank_candidates=(1, 2, 4))
    with pytest.warns(UserWarning, match="largest rank scanned, 4"):  # given: no rescan
        first = ls.refine(model, data=data, method=given, validation=val,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert first.info["rank"] == 4
    torch.testing.assert_close(r.delta, first.delta, rtol=1e-9, atol=1e-12)


def test_rank_auto_does_not_rescan_beyond_the_memory_budget():
    """A rescan that the plan's budget cannot hold is not run; the warning says why."""
    from lsr_scale.refine._plan import HEADROOM

    model, data, val = _teacher_problem()
    auto = ls.Subspace(rank="auto")
    at_8 = ls.Subspace(rank="auto", rank_candidates=(8,))
    roomy = ls.plan(model, data=data, method=auto, memory_budget=1e9)
    e4, e8 = (roomy.estimate(m).total for m in (auto, at_8))
    assert e4 < e8
    budget = (e4 + e8) / 2 / HEADROOM
    tight = ls.plan(model, data=data, method=auto, memory_budget=budget)
    assert not tight.adapted and tight.within_budget(auto) and not tight.within_budget(at_8)
    assert any("no rescan runs: rank 8 does not fit the memory budget" in n for n in tight.notes)
    given = ls.plan(model, data=data, method=ls.Subspace(rank="auto", rank_candidates=(2, 4)))
    assert not any("rescan" in n for n in given.notes)  # given candidates: never rescanned
    with pytest.warns(UserWarning, match=r"scanned, 4.*rank 8 does not fit the memory budget"):
        r = ls.refine(model, data=data, method=auto, validation=val, memory_budget=budget,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.info["svd_ranks"] == [4] and r.info["rank"] == 4
    # DataLoader data is not planned, so nothing says a rescan would fit: none is run
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=50)
    with pytest.warns(UserWarning, match=r"scanned, 4.*DataLoader data has no memory plan"):
        r = ls.refine(model, data=loader, method=auto, validation=val,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.info["svd_ranks"] == [4]


def test_rank_auto_rescans_on_a_transformer_encoder_layer():
    """The rescans on an attention model (torch's TransformerEncoderLayer, 2,321 parameters)
    fitting a perturbed copy of itself: the plan names them, the scan runs 75 -> 150 -> 300
    and keeps the rank with the lowest validation error, which cuts that error 10x."""
    import copy

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Linear(4, 16)
            self.enc = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.enc(self.emb(x)).mean(1))

    torch.manual_seed(0)
    net = Encoder().eval()
    teacher = copy.deepcopy(net)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        x, xv = torch.randn(300, 6, 4, generator=g), torch.randn(100, 6, 4, generator=g)
        y, yv = teacher(x), teacher(xv)
    auto = ls.Subspace(rank="auto")
    plan = ls.plan(net, data=(x, y), method=auto)
    assert any("it rescans at rank 150, then 300 (they fit)" in n for n in plan.notes)
    r = ls.refine(net, data=(x, y), method=auto, validation=(xv, yv),
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.info["svd_ranks"] == [75, 150, 300]
    assert r.info["rank"] == min(r.info["rank_scan"], key=lambda s: s["val_rel_l2"])["rank"]
    with torch.no_grad():
        before, after = ((f(xv) - yv).norm() / yv.norm() for f in (net, r))
    assert after < 0.1 * before
