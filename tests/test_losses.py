"""refine(..., loss=...): the classification losses, row weights, and their dense references."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, jacrev
from torch.utils._python_dispatch import TorchDispatchMode

import lsr_scale as ls
from lsr_scale.losses import factor_apply, factor_t_apply, gauss_newton_rows
from lsr_scale.refine._refine import LOGIT_SPREAD

# ------------------------------------------------------------------ data and models


def _digits(n_train=600, n_val=300, seed=0):
    """sklearn's 8x8 digits (shipped with scikit-learn), split by a seeded permutation."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


@pytest.fixture(scope="module")
def classifier():
    """A tanh MLP (2,410 parameters) trained briefly with Adam on integer digit labels."""
    (x, y), val, test = _digits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
    ).eval()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, (x, y), val, test


def _accuracy(f, x, y) -> float:
    with torch.no_grad():
        return float((f(x).argmax(-1) == y).float().mean())


def _ce(f, x, y) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(f(x).float(), y))


def _tiny(seed=0, c=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, c)
    ).double()


def _tiny_data(n=10, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _logit_jacobian(model, x):
    """Dense ``(N*C, m)`` Jacobian of the logits by jacrev, in named_parameters order."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    n_out = jac[next(iter(params))].shape[0] * jac[next(iter(params))].shape[1]
    return torch.cat([jac[k].reshape(n_out, -1) for k in params], dim=1)


def _dense_factor(s):
    """``L = diag(s) - p s^T`` of one row, formed densely (tests only)."""
    p = s * s
    return torch.diag(s) - torch.outer(p, s)


# ------------------------------------------------------------------ the algebra


def test_factor_identity_and_rhs():
    """L L^T = diag(p) - p p^T; the O(C) products are L and L^T; L c = p - y; c is orthogonal
    to s; the least-squares value is the Gauss-Newton model up to a constant."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    y = torch.nn.functional.one_hot(torch.tensor([0, 3, 6, 2, 2]), 7).double()
    s, c = gauss_newton_rows(z, y, floor=1e-12)
    p = torch.softmax(z, -1)
    v = torch.randn(5, 7, generator=g, dtype=torch.float64)
    for i in range(5):
        L = _dense_factor(s[i])
        H = torch.diag(p[i]) - torch.outer(p[i], p[i])
        torch.testing.assert_close(L @ L.T, H, rtol=0, atol=1e-12)
        torch.testing.assert_close(factor_t_apply(s[i : i + 1], v[i : i + 1])[0], L.T @ v[i])
        torch.testing.assert_close(factor_apply(s[i : i + 1], v[i : i + 1])[0], L @ v[i])
        torch.testing.assert_close(L @ c[i], p[i] - y[i], rtol=0, atol=1e-12)
        assert abs(float(s[i] @ c[i])) < 1e-12
        # 0.5 ||L^T u + c||^2 - 0.5 ||c||^2 = g^T u + 0.5 u^T H u for a logit change u
        u = v[i]
        lhs = 0.5 * (L.T @ u + c[i]).square().sum() - 0.5 * c[i].square().sum()
        rhs = (p[i] - y[i]) @ u + 0.5 * u @ H @ u
        assert abs(float(lhs - rhs)) < 1e-10


def test_floor_keeps_the_factor_consistent():
    """With a probability of 0 in float64 the clipped factor stays finite and L c = p - y."""
    z = torch.tensor([[0.0, 800.0, -800.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    s, c = gauss_newton_rows(z, y, floor=1e-6)
    assert bool(torch.isfinite(s).all() and torch.isfinite(c).all())
    assert float(c.abs().max()) <= 1.01 / 1e-3  # about 1/sqrt(floor)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(factor_apply(s, c), p - y, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ dense references


def test_gauss_newton_step_equals_dense_lstsq():
    """One cross_entropy step: the solution of min ||A d + c|| by a dense pseudo-inverse,
    A = blockdiag(L_i^T) J (jacrev, float64), at the rank of A (N (C - 1))."""
    model = _tiny()
    x, y = _tiny_data()
    n, c_ = x.shape[0], 3
    J = _logit_jacobian(model, x)
    with torch.no_grad():
        z0 = model(x)
    s, c = gauss_newton_rows(z0, torch.nn.functional.one_hot(y, c_).double(), floor=1e-6)
    A = torch.cat([_dense_factor(s[i]).T @ J[i * c_ : (i + 1) * c_] for i in range(n)])
    d_ref = -torch.linalg.pinv(A, rtol=1e-10) @ c.reshape(-1)
    rank = n * (c_ - 1)
    assert int(torch.linalg.matrix_rank(A)) == rank
    refined = ls.refine(
        model,
        data=(x, y),
        loss=ls.losses.CrossEntropy(steps=1),
        method=ls.Subspace(rank=rank),
        generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )
    step = refined.info["steps"][0]
    assert refined.param_names == [k for k, _ in model.named_parameters()]
    assert 0 < step["t"] <= 1
    torch.testing.assert_close(refined.delta, step["t"] * d_ref, rtol=1e-6, atol=1e-8)
    # the predictor is the linearized logits z0 + J delta
    torch.testing.assert_close(refined(x), z0 + (J @ refined.delta).reshape(n, c_))
    assert refined.info["n_rows"] == n * c_
    assert refined.info["loss_linearized"] < refined.info["loss_before"]


def test_softmax_mse_equals_dense_lstsq():
    """softmax_mse: min ||J_p d + p0 - y|| (jacrev of softmax(model)), and the predictor is
    p0 + J_p delta; to_network() returns logits at theta0 + delta."""
    model = _tiny()
    x, y = _tiny_data()
    n, c_ = x.shape[0], 3
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: torch.softmax(functional_call(model, p, (x,)), -1))(params)
    Jp = torch.cat([jac[k].reshape(n * c_, -1) for k in params], dim=1)
    with torch.no_grad():
        p0 = torch.softmax(model(x), -1)
    onehot = torch.nn.functional.one_hot(y, c_).double()
    d_ref = -torch.linalg.pinv(Jp, rtol=1e-10) @ (p0 - onehot).reshape(-1)
    refined = ls.refine(
        model,
        data=(x, y),
        loss="softmax_mse",
        method=ls.Subspace(rank=n * (c_ - 1)),
        generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )
    torch.testing.assert_close(refined.delta, d_ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(refined(x), p0 + (Jp @ d_ref).reshape(n, c_))
    torch.testing.assert_close(refined(x).sum(-1), torch.ones(n, dtype=torch.float64))
    net = refined.to_network()
    assert type(net) is type(model)
    with torch.no_grad():  # logits, no softmax added
        assert not torch.allclose(net(x).sum(-1), torch.ones(n, dtype=torch.float64))


# ------------------------------------------------------------------ errors


def test_integer_labels_with_mse_are_refused_naming_loss():
    model = _tiny()
    x, y = _tiny_data()
    with pytest.raises(TypeError, match=r"targets: expected floating targets for loss='mse'.*"
                       r"loss='cross_entropy'"):  # fmt: skip
        ls.refine(model, data=(x, y))
    with pytest.raises(TypeError, match=r"validation targets: .*loss="):
        ls.refine(
            model, data=(x, y.double()[:, None].expand(-1, 3).contiguous()),
            method=ls.Subspace(rank="auto"), validation=(x, y),
        )  # fmt: skip


def test_bad_classification_inputs_are_refused():
    model = _tiny()
    x, y = _tiny_data()
    bad_labels = y.clone()
    bad_labels[2] = 5
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\).*got labels in \[0, 5\]"):
        ls.refine(model, data=(x, bad_labels), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"class probabilities .*each row summing to 1"):
        ls.refine(model, data=(x, torch.rand(10, 3, dtype=torch.float64) + 1), loss="softmax_mse")
    with pytest.raises(ValueError, match=r"expected outputs of shape \(N, C\)"):
        flat = torch.nn.Sequential(model, torch.nn.Flatten(0))
        ls.refine(flat, data=(x, y), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"weights: expected shape \(10,\)"):
        ls.refine(model, data=(x, y), loss=ls.losses.CrossEntropy(weights=torch.ones(3)))
    with pytest.raises(ValueError, match=r"loss: expected 'mse', 'softmax_mse'"):
        ls.refine(model, data=(x, y), loss="hinge")
    with pytest.raises(TypeError, match=r"ls.losses.CrossEntropy\(\)"):
        ls.refine(model, data=(x, y), loss=ls.losses.CrossEntropy)
    with pytest.raises(ValueError, match=r"label_smoothing: expected a number in \[0, 1\)"):
        ls.losses.CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"weights: expected finite weights >= 0"):
        ls.losses.MSE(weights=-torch.ones(3))
    with pytest.raises(ValueError, match=r"loss: expected data=.*got residual_fn="):
        ls.refine(model, residual_fn=lambda p: p["0.bias"], loss="cross_entropy")


# ------------------------------------------------------------------ a trained classifier


@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("loss", ["cross_entropy", "softmax_mse"])
def test_trained_classifier_improves(classifier, loss, method):
    """Both default methods, both losses, integer labels: the training loss goes down and the
    held-out accuracy does not."""
    net, (x, y), _, (xt, yt) = classifier
    before = _accuracy(net, xt, yt)
    refined = ls.refine(
        net,
        data=(x, y),
        loss=loss,
        method=method,
        generator=torch.Generator().manual_seed(1),
        progress_bar=False,
    )
    info = refined.info
    assert info["loss"] == loss
    assert info["loss_linearized"] < info["loss_before"]
    assert info["accuracy"]["train"] >= info["accuracy_before"]["train"]
    assert _accuracy(refined, xt, yt) >= before
    out = refined(xt)
    assert out.shape == (xt.shape[0], 10) and out.dtype == torch.float32
    if loss == "cross_entropy":  # logits; the training cross-entropy falls at every kept step
        assert info["loss_before"] == pytest.approx(_ce(net, x, y), rel=1e-4)
        assert info["loss_linearized"] == pytest.approx(_ce(refined, x, y), rel=1e-3)
        kept = [e for e in info["steps"] if e["step"] <= info["selected_step"]]
        losses = [info["loss_before"]] + [e["train_loss"] for e in kept]
        assert all(b < a for a, b in zip(losses, losses[1:]))
        # the network iterate never raises the training loss
        assert _ce(refined.to_network().float(), x, y) < _ce(net, x, y)
    else:  # linearized probabilities
        torch.testing.assert_close(out.sum(-1), torch.ones(xt.shape[0]), rtol=0, atol=1e-4)


def test_cnn_classifier_cross_entropy():
    """A small CNN (conv, GELU, linear) on the digit images: cross_entropy with the Krylov
    defaults keeps the test accuracy and lowers the training loss."""
    (x, y), _, (xt, yt) = _digits(n_train=400)
    x, xt = x.reshape(-1, 1, 8, 8), xt.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
        torch.nn.GELU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    ).eval()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    refined = ls.refine(
        net, data=(x, y), loss="cross_entropy", method="krylov",
        generator=torch.Generator().manual_seed(2), progress_bar=False,
    )  # fmt: skip
    assert _ce(refined, x, y) < _ce(net, x, y)
    assert _accuracy(refined, xt, yt) >= _accuracy(net, xt, yt)


# ------------------------------------------------------------------ settings


def test_label_smoothing_targets_the_smoothed_loss(classifier):
    """With label smoothing the reported training loss is the cross-entropy against the
    smoothed targets (torch's definition), and it goes down."""
    net, (x, y), _, _ = classifier
    eps = 0.1
    refined = ls.refine(
        net, data=(x, y), loss=ls.losses.CrossEntropy(label_smoothing=eps, steps=1),
        method=ls.Subspace(rank=100), generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )  # fmt: skip
    with torch.no_grad():
        want_before = float(torch.nn.functional.cross_entropy(net(x), y, label_smoothing=eps))
        want_after = float(torch.nn.functional.cross_entropy(refined(x), y, label_smoothing=eps))
    assert refined.info["loss_before"] == pytest.approx(want_before, rel=1e-4)
    assert refined.info["loss_linearized"] == pytest.approx(want_after, rel=1e-3)
    assert want_after < want_before
    plain = ls.refine(
        net, data=(x, y), loss=ls.losses.CrossEntropy(steps=1), method=ls.Subspace(rank=100),
        generator=torch.Generator().manual_seed(0), progress_bar=False,
    )  # fmt: skip
    assert not torch.allclose(plain.delta, refined.delta)


@pytest.mark.parametrize(
    "loss", [ls.losses.MSE, ls.losses.SoftmaxMSE, ls.losses.CrossEntropy], ids=lambda c: c.name
)
def test_integer_row_weights_equal_repeated_rows(loss):
    """Weight 3 on a row is that row three times (float64, exact-rank subspace)."""
    model = _tiny()
    x, y = _tiny_data(n=8)
    w = torch.ones(8, dtype=torch.float64)
    w[0], w[5] = 3.0, 0.0
    rep = torch.tensor([0, 0, 0, 1, 2, 3, 4, 6, 7])  # row 0 three times, row 5 dropped
    targets = y if loss is not ls.losses.MSE else torch.sin(x[:, :3])
    kw = {"steps": 1} if loss is ls.losses.CrossEntropy else {}
    rank = 12  # below the rank of either Jacobian (8 rows, C = 3)
    g = 0

    def run(data, weights=None):
        return ls.refine(
            model, data=data, loss=loss(weights=weights, **kw), method=ls.Subspace(rank=rank),
            generator=torch.Generator().manual_seed(g), progress_bar=False,
        )  # fmt: skip

    weighted = run((x, targets), w)
    repeated = run((x[rep], targets[rep]), torch.ones(9, dtype=torch.float64))
    # the rank-12 subspace is random, but both problems have the same Gram matrix A^T A and
    # A^T b, so the randomized SVD of their Jacobians spans the same top directions
    torch.testing.assert_close(weighted.delta, repeated.delta, rtol=1e-5, atol=1e-8)
    unweighted = run((x, targets))
    assert not torch.allclose(weighted.delta, unweighted.delta, rtol=1e-3)


def test_validation_selects_the_step(classifier):
    """Validation labels that contradict the data: no step lowers the validation loss, so
    the model itself is kept (delta = 0); with real labels a step is kept and its
    validation loss is the lowest seen."""
    net, (x, y), (xv, yv), _ = classifier
    wrong = (yv + 1) % 10
    kw = dict(loss="cross_entropy", method=ls.Subspace(rank=200), progress_bar=False)
    bad = ls.refine(net, data=(x, y), validation=(xv, wrong),
                    generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
    assert bad.info["selected_step"] == 0
    assert bool((bad.delta == 0).all())
    torch.testing.assert_close(bad(xv), net(xv).detach())
    assert "validation loss did not improve" in bad.info["steps_stop"]
    good = ls.refine(net, data=(x, y), validation=(xv, yv),
                     generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
    info = good.info
    assert info["selected_step"] >= 1
    seen = [info["validation_loss_before"]] + [e["validation_loss"] for e in info["steps"]]
    assert info["validation_loss"] == min(seen)
    assert info["accuracy"]["validation"] == pytest.approx(_accuracy(good, xv, yv))
    assert info["accuracy"]["validation"] >= info["accuracy_before"]["validation"]


def test_softmax_mse_rank_auto_uses_validation(classifier):
    net, (x, y), (xv, yv), _ = classifier
    refined = ls.refine(
        net, data=(x, y), validation=(xv, yv), loss="softmax_mse",
        method=ls.Subspace(rank="auto"), generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )  # fmt: skip
    scan = refined.info["rank_scan"]
    assert refined.info["rank"] == min(scan, key=lambda r: r["val_rel_l2"])["rank"]
    assert set(refined.info["accuracy"]) == {"train", "validation"}
    assert refined.info["accuracy"]["validation"] == pytest.approx(_accuracy(refined, xv, yv))


def test_probability_targets_equal_one_hot_labels():
    model = _tiny()
    x, y = _tiny_data()
    kw = dict(loss="softmax_mse", method=ls.Subspace(rank=6), progress_bar=False)
    a = ls.refine(model, data=(x, y), generator=torch.Generator().manual_seed(0), **kw)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    b = ls.refine(model, data=(x, onehot), generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a.delta, b.delta)


def test_save_load_keeps_the_softmax_output(tmp_path):
    model = _tiny()
    x, y = _tiny_data()
    refined = ls.refine(
        model, data=(x, y), loss="softmax_mse", method=ls.Subspace(rank=6),
        generator=torch.Generator().manual_seed(0), progress_bar=False,
    )  # fmt: skip
    refined.save(tmp_path / "r.pt")
    again = ls.RefinedModel.load(tmp_path / "r.pt", _tiny(seed=0))
    assert again.output == "softmax"
    torch.testing.assert_close(again(x), refined(x))
    ce = ls.refine(
        model, data=(x, y), loss=ls.losses.CrossEntropy(steps=1), method=ls.Subspace(rank=6),
        generator=torch.Generator().manual_seed(0), progress_bar=False,
    )  # fmt: skip
    ce.save(tmp_path / "c.pt")
    again = ls.RefinedModel.load(tmp_path / "c.pt", _tiny(seed=0))
    torch.testing.assert_close(again(x), ce(x))
    with torch.no_grad():
        torch.testing.assert_close(again.to_network()(x), ce.to_network()(x))


def test_plan_with_a_classification_loss():
    model = _tiny()
    x, y = _tiny_data(n=200)
    for loss in ("cross_entropy", "softmax_mse"):
        p = ls.plan(model, data=(x, y), loss=loss, method="krylov", memory_budget=1e9)
        assert isinstance(p, ls.Plan)
        assert 0 < p.peak_bytes < 1e9


# ------------------------------------------------------------------ many classes


class _NoClassSquare(TorchDispatchMode):
    """Records the shapes of every tensor an operation returns with two trailing dimensions
    equal to C (a per-row C x C matrix, or one C x C matrix)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.seen = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-2:] == (self.c,) * 2:
                self.seen.append(tuple(t.shape))
        return out


@pytest.mark.filterwarnings("ignore:Krylov. stopped at maxiter")
@pytest.mark.parametrize("n_classes", [10, 1000])
def test_many_classes_stay_order_c_per_row(n_classes):
    """A linear head on 16 features: the Jacobian has N*C rows and no C x C tensor is made."""
    g = torch.Generator().manual_seed(0)
    n = 48
    feats = torch.randn(n, 16, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, n_classes)
    mode = _NoClassSquare(n_classes)
    with mode:
        refined = ls.refine(
            head, data=(feats, labels), loss=ls.losses.CrossEntropy(steps=2),
            method=ls.Krylov(maxiter=30), generator=g, progress_bar=False,
        )  # fmt: skip
    assert mode.ops > 0
    assert mode.seen == []
    assert refined.info["n_rows"] == n * n_classes
    assert refined.info["loss_linearized"] < refined.info["loss_before"]
    assert refined(feats).shape == (n, n_classes)


def test_params_subset_and_dtype_with_a_classification_loss():
    """params= names the user's parameters; dtype= refines a float64 copy of a float32 model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = _tiny_data(n=30)
    x = x.float()
    refined = ls.refine(
        model, data=(x, y), loss="cross_entropy", params=["2.weight", "2.bias"],
        method=ls.Subspace(rank=10), generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )  # fmt: skip
    assert refined.param_names == ["2.weight", "2.bias"]
    assert refined.delta.numel() == 6 * 3 + 3
    net = refined.to_network()
    torch.testing.assert_close(net[0].weight, model[0].weight)
    assert not torch.equal(net[2].weight, model[2].weight)
    with pytest.raises(ValueError, match=r"params: expected names of the model's parameters"):
        ls.refine(model, data=(x, y), loss="softmax_mse", params=["net.0.weight"])
    wide = ls.refine(
        model, data=(x, y), loss="softmax_mse", dtype=torch.float64,
        method=ls.Subspace(rank=10), generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )  # fmt: skip
    assert wide.dtype == torch.float64 and model[0].weight.dtype == torch.float32
    assert wide(x.double()).dtype == torch.float64
    assert wide.info["loss_linearized"] < wide.info["loss_before"]


def test_softmax_mse_is_the_softmax_wrapped_model_with_mse():
    """loss='softmax_mse' solves the problem of nn.Sequential(model, nn.Softmax(-1)) against
    one-hot targets with the default loss; only the labels and the returned network differ."""
    model = _tiny()
    x, y = _tiny_data()
    kw = dict(method=ls.Subspace(rank=6), progress_bar=False)
    ours = ls.refine(
        model, data=(x, y), loss="softmax_mse", generator=torch.Generator().manual_seed(0), **kw
    )
    wrapped = torch.nn.Sequential(model, torch.nn.Softmax(-1))
    onehot = torch.nn.functional.one_hot(y, 3).double()
    theirs = ls.refine(wrapped, data=(x, onehot), generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(ours.delta, theirs.delta)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.info["loss_linearized"] == pytest.approx(theirs.info["loss_linearized"])


@pytest.mark.slow
def test_guide_classification_example_runs(capsys):
    """The guide's digits example prints the accuracies its comments show."""
    pytest.importorskip("sklearn.datasets")
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = guide.split("## Classification", 1)[1].split("\n## ", 1)[0]
    code = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "load_digits" in b)
    exec(compile(code, "guide-classification-example", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.strip()
    want = "\n".join(line[2:] for line in code.splitlines() if line.startswith("# "))
    assert printed == want


# ------------------------------------------------------------------ the one-hot hint


def test_one_hot_targets_with_logit_outputs_warn_toward_cross_entropy():
    """loss='mse' on one-hot rows warns when the outputs spread like logits (here scaled up
    by 20), and stays quiet on probabilities, on small logits and on other float targets."""
    model = _tiny()
    x, y = _tiny_data()
    one_hot = torch.nn.functional.one_hot(y, 3).double()
    loud = copy.deepcopy(model)
    with torch.no_grad():
        loud[2].weight.mul_(20.0)
        loud[2].bias.copy_(torch.tensor([-8.0, 0.0, 8.0], dtype=torch.float64))
        spread = loud(x).amax(1) - loud(x).amin(1)
    assert float(spread.median()) > LOGIT_SPREAD
    method = ls.Subspace(rank=5)
    with pytest.warns(UserWarning, match=r"every row is one-hot.*loss='cross_entropy'"):
        ls.refine(loud, data=(x, one_hot), method=method)
    quiet = {
        "probabilities": (torch.nn.Sequential(loud, torch.nn.Softmax(-1)), one_hot),
        "small logits": (model, one_hot),
        "not one-hot": (loud, one_hot * 0.9 + 0.1 / 3),
    }
    for what, (net, targets) in quiet.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = ls.refine(net, data=(x, targets), method=method)
        assert r.info["loss_linearized"] < r.info["loss_before"], what
