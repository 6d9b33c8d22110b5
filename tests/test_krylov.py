"""Krylov LSR by default: float32 models, its own stop, validation, filters, interrupts."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.func import functional_call, grad, vmap

import lsr_scale as ls
from lsr_scale.models import MLP
from lsr_scale.precond import Nystrom
from lsr_scale.problems import FunctionProblem


@pytest.fixture(scope="module")
def mlp32():
    """A float32 tanh MLP trained with Adam (the demo's problem, scaled down; ~10 s)."""
    prob = FunctionProblem(n_train=600, widths=(2, 20, 20, 1), seed=0)
    model = prob.make_model()
    prob.train(model, epochs=1500, lr=3e-3, progress=False)
    return prob, model


def _pinn32():
    """-u'' = f on [-1, 1], u(+-1) = 0, u = sin(pi x): float32, residual through torch.func."""
    torch.manual_seed(3)
    model = MLP((1, 20, 20, 1))
    x = torch.linspace(-1, 1, 120)[1:-1]
    xb = torch.tensor([[-1.0], [1.0]])
    f = math.pi**2 * torch.sin(math.pi * x)

    def u(p, pt):
        return functional_call(model, p, (pt.reshape(1, 1),)).reshape(())

    def residual(p):
        upp = vmap(grad(grad(u, argnums=1), argnums=1), in_dims=(None, 0))(p, x).reshape(-1)
        ub = functional_call(model, p, (xb,)).reshape(-1)
        return torch.cat([-upp - f, 10 * ub])

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(800):
        opt.zero_grad()
        residual(dict(model.named_parameters())).square().mean().backward()
        opt.step()
    xt = torch.linspace(-1, 1, 301)[:, None]
    return model, residual, (xt, torch.sin(math.pi * xt))


def _rel(pred, y):
    return float((pred.double() - y.double()).norm() / y.double().norm())


def _refine_quiet(*args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ls.refine(*args, **kw)
    return r, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _stopped_honestly(r, caught):
    """Either a rule of its own stopped it, or the limit was hit and it said so."""
    if r.info["solver"].istop == 7 and r.info["stop"].startswith("7"):
        return any("maxiter" in str(w.message) for w in caught)
    return True


# ---------------------------------------------------------------------- defaults on float32
def test_default_krylov_at_least_default_subspace_on_float32_mlp(mlp32):
    prob, model = mlp32
    data = (prob.x_train, prob.y_train)
    sub = ls.refine(model, data=data, generator=torch.Generator().manual_seed(0))
    kry, caught = _refine_quiet(
        model, data=data, method="krylov", generator=torch.Generator().manual_seed(0)
    )
    e_sub, e_kry = prob.test_error(sub), prob.test_error(kry)
    assert e_kry <= e_sub, (e_kry, e_sub)
    assert e_kry < prob.test_error(model) / 10
    assert kry.info["iterations"] <= 300 and _stopped_honestly(kry, caught)
    # products in float64 on a private copy; the predictor keeps the user's dtype
    assert kry.info["product_dtype"] == "torch.float64" and kry.io_dtype == torch.float32
    assert kry(prob.x_test).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32


def test_default_krylov_at_least_default_subspace_on_float32_pinn():
    model, residual, (xt, yt) = _pinn32()
    sub = ls.refine(model, residual_fn=residual, generator=torch.Generator().manual_seed(0))
    kry, caught = _refine_quiet(
        model, residual_fn=residual, method="krylov", generator=torch.Generator().manual_seed(0)
    )
    base = _rel(model(xt), yt)
    e_sub, e_kry = _rel(sub(xt), yt), _rel(kry(xt), yt)
    assert e_kry <= e_sub, (e_kry, e_sub, base)
    assert e_kry < base
    assert kry.info["precision"] == "mixed"  # residual_fn: float32 products, float64 solve
    assert kry.info["iterations"] <= 300 and _stopped_honestly(kry, caught)


def test_float32_working_precision_is_the_old_behaviour_and_worse(mlp32):
    prob, model = mlp32
    data = (prob.x_train, prob.y_train)
    g = torch.Generator
    new = ls.refine(model, data=data, method="krylov", generator=g().manual_seed(0))
    old, _ = _refine_quiet(
        model,
        data=data,
        method=ls.Krylov(precision="working", stall=None),
        generator=g().manual_seed(0),
    )
    assert old.info["precision"] == "torch.float32"
    assert prob.test_error(new) < prob.test_error(old) / 10


def test_float64_precision_needs_data():
    model, residual, _ = _pinn32()
    with pytest.raises(ValueError, match="precision: 'float64' converts a copy"):
        ls.refine(model, residual_fn=residual, method=ls.Krylov(precision="float64"))


# ---------------------------------------------------------------------- stopping
def test_maxiter_warns_and_says_so(mlp32):
    prob, model = mlp32
    with pytest.warns(RuntimeWarning, match="stopped at maxiter=4"):
        r = ls.refine(
            model, data=(prob.x_train, prob.y_train), method=ls.Krylov(maxiter=4, stall=None)
        )
    assert r.info["iterations"] == 4 and r.info["stop"].startswith("7")


def test_maxiter_advice_depends_on_the_preconditioner(mlp32):
    """With the Nystrom preconditioner in use the warning does not suggest one."""
    prob, model = mlp32
    data = (prob.x_train, prob.y_train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ls.refine(model, data=data, method=ls.Krylov(maxiter=4, stall=None))
        ls.refine(model, data=data, method=ls.Krylov(maxiter=4, stall=None, preconditioner=None))
    msgs = [str(w.message) for w in caught if "stopped at maxiter" in str(w.message)]
    assert len(msgs) == 2
    assert "preconditioner" not in msgs[0] and "use a preconditioner" in msgs[1]


def test_maxiter_warning_with_validation_says_the_error_was_still_improving(mlp32):
    prob, model = mlp32
    with pytest.warns(RuntimeWarning, match="validation error had not stopped improving"):
        ls.refine(
            model,
            data=(prob.x_train, prob.y_train),
            method=ls.Krylov(maxiter=20, stall=None, check_every=5),
            validation=(prob.x_train[:50], prob.y_train[:50]),
            generator=torch.Generator().manual_seed(0),
        )


def test_stall_rule_stops_when_progress_stalls(mlp32):
    prob, model = mlp32
    r, caught = _refine_quiet(
        model, data=(prob.x_train, prob.y_train), method=ls.Krylov(stall=0.9, check_every=5)
    )
    assert r.info["stop"].startswith("stalled")
    assert r.info["iterations"] % 5 == 0 and r.info["iterations"] < 300
    assert not any("maxiter" in str(w.message) for w in caught)


def test_validation_early_stopping_returns_the_best_iterate(mlp32):
    prob, model = mlp32
    g = torch.Generator().manual_seed(9)
    xv = torch.rand(300, 2, generator=g) * 2 - 1
    from lsr_scale.problems import target_function

    yv = target_function(xv)
    r, _ = _refine_quiet(
        model,
        data=(prob.x_train, prob.y_train),
        method=ls.Krylov(check_every=5, patience=3),
        validation=(xv, yv),
    )
    v = r.info["validation"]
    best = min(e for _, e in v["history"])
    assert v["best_rel_l2"] == best
    assert v["best_iteration"] == min(v["history"], key=lambda t: t[1])[0]
    # the returned delta is the best iterate's: its validation error is the recorded best
    # (float64 inputs: the predictor computes in float64, where the solve ran)
    assert _rel(r(xv.double()), yv) == pytest.approx(best, rel=1e-8)
    assert r(xv).dtype == torch.float32 and r.io_dtype == torch.float32


def test_target_rank_sets_damp_from_sigma_k(mlp32):
    prob, model = mlp32
    r, _ = _refine_quiet(
        model,
        data=(prob.x_train, prob.y_train),
        method=ls.Krylov(preconditioner=Nystrom(rank=60), target_rank=40, maxiter=30),
        generator=torch.Generator().manual_seed(0),
    )
    s = r.info["solver"]
    assert r.info["damp"] > 0
    with pytest.raises(ValueError, match="target_rank: expected <= the Nystrom rank 60"):
        ls.Krylov(preconditioner=Nystrom(rank=60), target_rank=80)
    with pytest.raises(ValueError, match="target_rank: sets damp"):
        ls.Krylov(target_rank=5, damp=1e-3)
    assert s.itn <= 30


# ---------------------------------------------------------------------- interrupts, resume
class _InterruptAfter:
    """Wraps a JacobianOperator's matvec to raise KeyboardInterrupt on the k-th call."""

    def __init__(self, monkeypatch, k):
        from lsr_scale.operators import JacobianOperator

        self.calls = 0
        orig = JacobianOperator.matvec

        def matvec(op, x):
            self.calls += 1
            if self.calls == k:
                raise KeyboardInterrupt
            return orig(op, x)

        monkeypatch.setattr(JacobianOperator, "matvec", matvec)


def test_ctrl_c_returns_the_latest_iterate(mlp32, monkeypatch):
    prob, model = mlp32
    _InterruptAfter(monkeypatch, 12)
    with pytest.warns(RuntimeWarning, match="interrupted after"):
        r = ls.refine(
            model,
            data=(prob.x_train, prob.y_train),
            method=ls.Krylov(preconditioner=None, stall=None, maxiter=100),
        )
    assert r.info["interrupted"] is True and r.info["stop"].startswith("interrupted")
    assert 5 <= r.info["iterations"] < 100
    assert prob.test_error(r) < prob.test_error(model)


def test_checkpoint_and_resume_give_the_same_iterates(mlp32, tmp_path, monkeypatch):
    prob, model = mlp32
    data = (prob.x_train, prob.y_train)
    kw = dict(stall=None, maxiter=30, preconditioner=Nystrom(rank=20))
    full, _ = _refine_quiet(
        model, data=data, method=ls.Krylov(**kw), generator=torch.Generator().manual_seed(4)
    )
    path = tmp_path / "ck.pt"
    with monkeypatch.context() as mp:
        # the build goes through matmat; LSMR takes one matvec per iteration
        _InterruptAfter(mp, 17)
        part, _ = _refine_quiet(
            model,
            data=data,
            method=ls.Krylov(checkpoint=path, checkpoint_every=5, **kw),
            generator=torch.Generator().manual_seed(4),
        )
    assert part.info["interrupted"] and path.exists()
    resumed, _ = _refine_quiet(
        model,
        data=data,
        method=ls.Krylov(resume=path, **kw),
        generator=torch.Generator().manual_seed(123),
    )
    assert resumed.info["iterations"] == 30
    assert torch.equal(resumed.delta, full.delta)


def test_ctrl_c_in_a_rank_scan_keeps_the_best_rank_so_far(mlp32, monkeypatch):
    from lsr_scale.refine import _subspace

    prob, model = mlp32
    calls = {"n": 0}
    orig = _subspace.NestedLstsq.solve

    def solve(self, k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third candidate of the scan
            raise KeyboardInterrupt
        return orig(self, k)

    monkeypatch.setattr(_subspace.NestedLstsq, "solve", solve)
    xv, yv = prob.x_test[::7], prob.y_test[::7]
    with pytest.warns(RuntimeWarning, match="rank scan interrupted after 2 of 4"):
        r = ls.refine(
            model,
            data=(prob.x_train, prob.y_train),
            method=ls.Subspace(rank="auto", rank_candidates=[5, 10, 20, 40]),
            validation=(xv, yv),
            generator=torch.Generator().manual_seed(0),
        )
    assert r.info["interrupted"] is True
    assert [s["rank"] for s in r.info["rank_scan"]] == [5, 10]
    assert r.info["rank"] in (5, 10)
