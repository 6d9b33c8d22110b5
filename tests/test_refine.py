"""refine / RefinedModel: dense references, accuracy on a trained net, persistence, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, jacrev

import lsr_scale as ls
from lsr_scale.models import MLP
from lsr_scale.problems import FunctionProblem


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"model tensor {k} changed"


@pytest.fixture(scope="module")
def trained():
    """A small tanh MLP trained with Adam on the demo problem (float64, ~2 s)."""
    torch.manual_seed(0)
    prob = FunctionProblem(n_train=400, grid=24, widths=(2, 20, 20, 1), seed=0, dtype=torch.float64)
    model = prob.make_model()
    prob.train(model, epochs=1500, lr=1e-2, progress=False)
    return prob, model


def _tiny(seed=0, widths=(2, 4, 3, 1)):
    torch.manual_seed(seed)
    return MLP(widths).double()


def test_subspace_equals_dense_reference():
    """jacrev Jacobian -> exact top-k SVD -> P = V_k / S_k -> lstsq, in float64."""
    g = torch.Generator().manual_seed(1)
    model = _tiny()
    x = torch.rand(50, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    params = {k: v.detach() for k, v in model.named_parameters()}
    m = sum(p.numel() for p in params.values())
    k = 8

    def res(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    jac = jacrev(res)(params)
    G = torch.cat([jac[name].reshape(50, -1) for name in params], dim=1)
    f0 = res(params)
    _, S, Vh = torch.linalg.svd(G, full_matrices=False)
    P = Vh[:k].T / S[:k]
    c = torch.linalg.lstsq(G @ P, -f0.unsqueeze(1)).solution.squeeze(1)
    delta_ref = P @ c

    # oversample so that k + p = m: the range finder then sees the whole row space exactly
    refined = ls.refine(
        model,
        data=(x, y),
        method=ls.Subspace(rank=k, oversample=m - k),
        generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )
    torch.testing.assert_close(refined.delta, delta_ref, rtol=1e-6, atol=1e-6 * delta_ref.norm())
    # the linear predictor is q(theta0, x) + J_q(x) delta
    torch.testing.assert_close(
        refined(x).reshape(-1), (y.reshape(-1) + f0 + G @ delta_ref), rtol=1e-6, atol=1e-8
    )
    assert refined.info["rank"] == k
    assert refined.info["loss_linearized"] < refined.info["loss_before"]


def test_residual_fn_path_matches_data_path():
    g = torch.Generator().manual_seed(2)
    model = _tiny(1)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64)
    y = torch.cos(2 * x[:, :1])

    def residual_fn(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    k6 = ls.Subspace(rank=6)
    a = ls.refine(model, data=(x, y), method=k6, generator=torch.Generator().manual_seed(0))
    b = ls.refine(
        model, residual_fn=residual_fn, method=k6, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(a.delta, b.delta, rtol=1e-10, atol=1e-12)


def test_subspace_cuts_trained_error_10x_and_krylov_reduces(trained):
    prob, model = trained
    before = _state(model)
    base = prob.test_error(model)
    data = (prob.x_train, prob.y_train)
    sub = ls.refine(
        model, data=data, method=ls.Subspace(rank=200), generator=torch.Generator().manual_seed(0)
    )
    kry = ls.refine(model, data=data, method=ls.Krylov(preconditioner=None, maxiter=300))
    err_sub = prob.test_error(sub)
    err_kry = prob.test_error(kry)
    assert err_sub < base / 10, (base, err_sub)
    assert err_kry < base, (base, err_kry)
    assert kry.info["iterations"] <= 300
    assert kry.info["num_jvp"] >= kry.info["iterations"]
    _assert_unchanged(model, before)


def test_model_unchanged_with_batchnorm_eval_and_dtype_copy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    )
    model.eval()
    before = _state(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g)
    y = torch.randn(30, 1, generator=g)
    refined = ls.refine(
        model, data=(x, y), method=ls.Subspace(rank=5), dtype=torch.float64, generator=g
    )
    _assert_unchanged(model, before)
    assert model.training is False
    assert refined.dtype == torch.float64
    assert refined(x.double()).dtype == torch.float64
    with pytest.raises(TypeError, match="expected dtype torch.float64"):
        refined(x)


def test_to_network_is_theta0_plus_delta(trained):
    prob, model = trained
    refined = ls.refine(
        model,
        data=(prob.x_train, prob.y_train),
        method=ls.Subspace(rank=20),
        generator=torch.Generator().manual_seed(0),
    )
    net = refined.to_network()
    assert net is not model
    delta = refined.delta_dict
    for name, p in net.named_parameters():
        torch.testing.assert_close(
            p.detach(), dict(model.named_parameters())[name].detach() + delta[name]
        )


def test_save_load_round_trip(tmp_path, trained):
    prob, model = trained
    refined = ls.refine(
        model,
        data=(prob.x_train, prob.y_train),
        method=ls.Subspace(rank=30),
        generator=torch.Generator().manual_seed(0),
    )
    path = tmp_path / "refined.pt"
    refined.save(path)
    fresh = copy.deepcopy(model)
    with torch.no_grad():  # a model with other weights: the saved theta0 must win
        for p in fresh.parameters():
            p.add_(1.0)
    loaded = ls.RefinedModel.load(path, fresh)
    assert torch.equal(loaded.delta, refined.delta)
    assert torch.equal(loaded(prob.x_test), refined(prob.x_test))
    assert loaded.info["rank"] == 30
    with pytest.raises(ValueError, match="expected the architecture"):
        ls.RefinedModel.load(path, MLP((2, 21, 20, 1)).double())
    bad = tmp_path / "other.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="RefinedModel.save"):
        ls.RefinedModel.load(bad, model)


def test_rank_auto_scans_nested_truncations(trained):
    prob, model = trained
    g = torch.Generator().manual_seed(5)
    xv = torch.rand(200, 2, generator=g, dtype=torch.float64) * 2 - 1
    from lsr_scale.problems import target_function

    refined = ls.refine(
        model,
        data=(prob.x_train, prob.y_train),
        method=ls.Subspace(rank="auto", rank_candidates=[10, 40, 120, 240]),
        validation=(xv, target_function(xv)),
        generator=g,
    )
    scan = refined.info["rank_scan"]
    assert [r["rank"] for r in scan] == [10, 40, 120, 240]
    best = min(scan, key=lambda r: r["val_rel_l2"])
    assert refined.info["rank"] == best["rank"]
    assert refined.delta.shape[0] == prob.n_params


def test_reduced_lsmr_matches_dense(trained):
    prob, model = trained
    data = (prob.x_train, prob.y_train)
    dense = ls.refine(
        model,
        data=data,
        method=ls.Subspace(rank=60, reduced="dense"),
        generator=torch.Generator().manual_seed(3),
    )
    sketched = ls.refine(
        model,
        data=data,
        method=ls.Subspace(rank=60, reduced="lsmr", reduced_atol=1e-12, reduced_btol=1e-12),
        generator=torch.Generator().manual_seed(3),
    )
    assert sketched.info["reduced_solver"] == "lsmr"
    # forced by memory: a tiny budget must route to the matrix-free solve
    auto = ls.refine(
        model,
        data=data,
        method=ls.Subspace(rank=60, max_dense_bytes=1024),
        generator=torch.Generator().manual_seed(3),
    )
    assert auto.info["reduced_solver"] == "lsmr"
    rel = (sketched.delta - dense.delta).norm() / dense.delta.norm()
    assert rel < 1e-6, rel


class _Unused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.spare = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.lin(x)


def test_bad_inputs_raise_and_leave_model_unchanged():
    g = torch.Generator().manual_seed(0)
    model = _tiny()
    before = _state(model)
    x = torch.rand(20, 2, generator=g, dtype=torch.float64)
    y = torch.rand(20, 1, generator=g, dtype=torch.float64)
    m = sum(p.numel() for p in model.parameters())
    k2 = ls.Subspace(rank=2)
    with pytest.raises(ValueError, match=r"rank: expected <= min\(n, m\)"):
        ls.refine(model, data=(x, y), method=ls.Subspace(rank=21))
    with pytest.raises(ValueError, match="at least one row"):
        ls.refine(model, data=(x[:0], y[:0]), method=k2)
    with pytest.raises(TypeError, match="expected dtype torch.float64"):
        ls.refine(model, data=(x.float(), y), method=k2)
    with pytest.raises(ValueError, match="targets: expected"):
        ls.refine(model, data=(x, y[:10]), method=k2)
    with pytest.raises(ValueError, match="exactly one of"):
        ls.refine(model, method=k2)
    with pytest.raises(ValueError, match="method: expected 'subspace', 'krylov'"):
        ls.refine(model, data=(x, y), method="newton")
    y_bad = y.clone()
    y_bad[3] = float("nan")
    y_bad[7] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 20.*non-finite.*\[3, 7\]"):
        ls.refine(model, data=(x, y_bad), method=k2)
    drop = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
    ).double()
    drop.train()
    with pytest.raises(ValueError, match="change between"):
        ls.refine(drop, data=(x, y), method=k2)
    with pytest.raises(ValueError, match="spare"):
        ls.refine(_Unused().double(), data=(x, y), method=k2)
    _assert_unchanged(model, before)
    assert m > 21


def test_krylov_auto_preconditioner_tall_uses_sketch_and_matches_lstsq():
    """n >= 8 m: 'auto' picks sketch-and-precondition; the LS solution is unique, so compare."""
    g = torch.Generator().manual_seed(4)
    model = _tiny(2, widths=(2, 6, 1))  # 25 parameters
    x = torch.rand(400, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(2 * x[:, :1]) * x[:, 1:]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def res(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    jac = jacrev(res)(params)
    G = torch.cat([jac[name].reshape(400, -1) for name in params], dim=1)
    ref = torch.linalg.lstsq(G, -res(params).unsqueeze(1)).solution.squeeze(1)
    refined = ls.refine(model, data=(x, y), method=ls.Krylov(atol=1e-12, btol=1e-12), generator=g)
    assert refined.info["preconditioner"]["name"] == "sketch"
    assert refined.info["iterations"] <= 30
    torch.testing.assert_close(refined.delta, ref, rtol=1e-7, atol=1e-7 * float(ref.norm()))


def test_refine_is_both_the_module_and_the_function():
    """``lsr_scale.refine`` names the subpackage and the function: the module is callable."""
    import inspect

    import lsr_scale.refine as r

    assert r is ls.refine
    assert r.default_rank is ls.refine.default_rank  # the module's building blocks
    assert inspect.signature(ls.refine) == inspect.signature(r.refine)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(40, 2, dtype=torch.float64)
    y = torch.sin(x[:, :1])
    net = net.double()
    kw = dict(data=(x, y), method=ls.Subspace(rank=10), progress_bar=False)
    a = ls.refine(net, generator=torch.Generator().manual_seed(0), **kw)
    b = r.refine(net, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a(x), b(x))
