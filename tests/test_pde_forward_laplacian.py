"""Forward Laplacian of MLPs, modified MLPs and DeepONet trunks against torch.func, float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, linearize, vjp

from lsr_scale import pde
from lsr_scale.models import MLP, DeepONet, ModifiedMLP
from lsr_scale.pde import _derivatives

TOL = dict(rtol=1e-10, atol=1e-10)
D64 = torch.float64


def _models():
    torch.manual_seed(0)
    sig = nn.Sigmoid()  # one instance used twice: every use must count
    return {
        "mlp-tanh": MLP([3, 8, 8, 2], "tanh"),
        "mlp-sin": MLP([3, 8, 8, 2], "sin"),
        "mlp-silu": MLP([3, 8, 8, 2], "silu"),
        "mlp-gelu": MLP([3, 8, 8, 2], "gelu"),
        "seq-sigmoid-shared": nn.Sequential(
            nn.Linear(3, 8), sig, nn.Linear(8, 8), sig, nn.Identity(), nn.Linear(8, 2)
        ),
        "modified-tanh": ModifiedMLP([3, 8, 8, 8, 2], "tanh"),
        "modified-sin": ModifiedMLP([3, 8, 8, 2], "sin"),
        "deeponet-mlp": DeepONet([4, 8, 8], [3, 8, 8]),
        "deeponet-modified": DeepONet([4, 8, 8], [3, 8, 8, 8], arch="modified"),
    }


MODELS = list(_models())


def _setup(name, n=7):
    net = _models()[name].to(D64)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, generator=g, dtype=D64)
    rows = (torch.randn(1, 4, generator=g, dtype=D64),) if name.startswith("deeponet") else ()
    return net, x, rows


def _func_laplacian(net, x, rows, params=None, output=0):
    pts = tuple(r.expand(x.shape[0], -1) for r in rows)
    f = pde.scalar_fn(net, params, output=output)
    return pde.value(f, x, *pts), pde.gradient(f, x, *pts), pde.laplacian(f, x, *pts)


@pytest.mark.parametrize("name", MODELS)
def test_value_gradient_laplacian_match_torch_func(name):
    net, x, rows = _setup(name)
    outputs = [0] if name.startswith("deeponet") else [0, 1]
    assert pde.supports_forward_laplacian(net)
    for out in outputs:
        u, g, lap = pde.forward_laplacian(net, x, output=out, rows=rows)
        u_ref, g_ref, lap_ref = _func_laplacian(net, x, rows, output=out)
        torch.testing.assert_close(u, u_ref, **TOL)
        torch.testing.assert_close(g, g_ref, **TOL)
        torch.testing.assert_close(lap, lap_ref, **TOL)


def test_deeponet_aligned_branch_rows():
    net, x, _ = _setup("deeponet-mlp")
    u = torch.randn(x.shape[0], 4, dtype=D64)
    lap = pde.forward_laplacian(net, x, rows=(u,))[2]
    torch.testing.assert_close(lap, _func_laplacian(net, x, (u,))[2], **TOL)


@pytest.mark.parametrize("name", ["mlp-tanh", "modified-tanh", "deeponet-mlp", "mlp-gelu"])
def test_parameter_products_match_torch_func(name):
    """JVP (fresh and linearized), VJP and their vmaps through the hand-written step rule."""
    net, x, rows = _setup(name)
    params = {k: v.detach() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(2)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=D64) for k, v in params.items()}
    w = torch.randn(x.shape[0], generator=g, dtype=D64)

    def fast(p):
        return pde.forward_laplacian(net, x, p, rows=rows)[2]

    def ref(p):
        return _func_laplacian(net, x, rows, p)[2]

    jv_ref = jvp(ref, (params,), (tangent,))[1]
    torch.testing.assert_close(jvp(fast, (params,), (tangent,))[1], jv_ref, **TOL)
    torch.testing.assert_close(linearize(fast, params)[1](tangent), jv_ref, **TOL)
    vj, vj_ref = vjp(fast, params)[1](w)[0], vjp(ref, params)[1](w)[0]
    for k in params:
        torch.testing.assert_close(vj[k], vj_ref[k], **TOL)
    # batched over columns, as JacobianOperator's vmap batching does
    tangents = {k: torch.stack([v, 2 * v]) for k, v in tangent.items()}
    jm = torch.vmap(lambda t: jvp(fast, (params,), (t,))[1])(tangents)
    torch.testing.assert_close(jm, torch.stack([jv_ref, 2 * jv_ref]), **TOL)
    vm = torch.vmap(vjp(fast, params)[1])(torch.stack([w, -w]))[0]
    for k in params:
        torch.testing.assert_close(vm[k][1], -vj_ref[k], **TOL)


def test_second_order_in_the_parameters_is_exact():
    """The step rule is written in differentiable ops: Hessians and double backward agree."""
    net, x, _ = _setup("mlp-tanh", n=4)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(fn):
        return lambda p: fn(p).square().sum()

    fast = loss(lambda p: pde.forward_laplacian(net, x, p)[2])
    ref = loss(lambda p: _func_laplacian(net, x, (), p)[2])
    h, h_ref = (torch.func.hessian(f)(params) for f in (fast, ref))
    for a in params:
        for b in params:
            torch.testing.assert_close(h[a][b], h_ref[a][b], **TOL)
    # autograd double backward (a training step's Hessian-vector product)
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    used = [k for k in p if k != "net.4.bias"]  # the last bias does not reach a Laplacian
    grads = torch.autograd.grad(fast(p), [p[k] for k in used], create_graph=True)
    (hv,) = torch.autograd.grad(sum(g.sum() for g in grads), [p["net.0.weight"]])
    want = sum(h_ref[a]["net.0.weight"].reshape(params[a].numel(), -1).sum(0) for a in used)
    torch.testing.assert_close(hv, want.reshape(hv.shape), **TOL)


def test_laplacian_entry_picks_forward_and_falls_back(monkeypatch):
    calls = []
    real = _derivatives.forward_laplacian

    def spy(*a, **k):
        calls.append(type(a[0]).__name__)
        return real(*a, **k)

    monkeypatch.setattr(_derivatives, "forward_laplacian", spy)
    for name in ("mlp-tanh", "modified-tanh", "deeponet-modified"):
        net, x, rows = _setup(name)
        params = {k: v.detach() for k, v in net.named_parameters()}
        fast = pde.laplacian(net, x, *rows, params=params)
        slow = pde.laplacian(net, x, *rows, params=params, route="func")
        torch.testing.assert_close(fast, slow, **TOL)
    assert calls == ["MLP", "ModifiedMLP", "DeepONet"]

    # unsupported: ReLU, GELU(tanh) and a custom module fall back to torch.func
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x))) * 2

    torch.manual_seed(3)
    x = torch.rand(5, 3, dtype=D64)
    for net in (
        MLP([3, 8, 1], "relu").to(D64),
        nn.Sequential(nn.Linear(3, 8), nn.GELU("tanh"), nn.Linear(8, 1)).to(D64),
        Scaled().to(D64),
    ):
        assert not pde.supports_forward_laplacian(net)
        calls.clear()
        got = pde.laplacian(net, x)
        assert calls == []
        torch.testing.assert_close(got, _func_laplacian(net, x, ())[2], **TOL)
        with pytest.raises(TypeError, match="expected an nn.Sequential"):
            pde.laplacian(net, x, route="forward")


def test_forward_laplacian_errors():
    net, x, rows = _setup("deeponet-mlp")
    with pytest.raises(ValueError, match="rows"):
        pde.forward_laplacian(net, x)
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        pde.forward_laplacian(net, x, rows=(torch.zeros(3, 4, dtype=D64),))
    with pytest.raises(ValueError, match="output"):
        pde.forward_laplacian(net, x, rows=rows, output=1)
    mlp, x, _ = _setup("mlp-tanh")
    with pytest.raises(ValueError, match="output: expected an index in"):
        pde.forward_laplacian(mlp, x, output=2)
    with pytest.raises(ValueError, match="rows: expected no extra inputs"):
        pde.forward_laplacian(mlp, x, rows=rows)
    with pytest.raises(ValueError, match="2-D"):
        pde.forward_laplacian(mlp, x[0])
    with pytest.raises(ValueError, match="route"):
        pde.laplacian(mlp, x, route="fast")
    with pytest.raises(TypeError, match="nn.Module"):
        pde.laplacian(lambda z: z.sum(), x, params={})


def test_training_gradient_matches_autograd_reference():
    """loss.backward() through the forward Laplacian (how the Poisson workload trains)."""
    net, x, _ = _setup("mlp-tanh")
    lap = pde.forward_laplacian(net, x)[2]
    grads = torch.autograd.grad(lap.square().mean(), list(net.parameters()), allow_unused=True)
    params = {k: v.detach() for k, v in net.named_parameters()}
    ref = torch.func.grad(lambda p: _func_laplacian(net, x, (), p)[2].square().mean())(params)
    for (k, _), gr in zip(net.named_parameters(), grads):
        torch.testing.assert_close(torch.zeros_like(ref[k]) if gr is None else gr, ref[k], **TOL)
    # the module's own parameters are used by default
    torch.testing.assert_close(lap, pde.forward_laplacian(net, x, dict(net.named_parameters()))[2])
    assert functional_call(net, params, (x,)).shape == (x.shape[0], 2)
