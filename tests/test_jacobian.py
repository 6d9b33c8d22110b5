"""JacobianOperator against dense torch.func.jacrev Jacobians, and its input checks."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import func as tfunc

import lsr_scale.operators._jacobian as jac_module
from lsr_scale.operators import JacobianOperator, flatten_params, unflatten_params
from lsr_scale.operators._jacobian import module_jvp
from lsr_scale.testing import dottest

F64 = torch.float64

# torch's forward-AD decompositions are registered through torch.jit.script on first use.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

# (jvp, linearize, cache) combinations exercised for every model.
MODES = [
    ("forward", "auto", True),
    ("forward", True, True),
    ("forward", False, True),
    ("forward", "auto", False),
    ("double_vjp", "auto", True),
    ("double_vjp", "auto", False),
]
MODE_IDS = [f"{j}-lin{lin}-cache{c}" for j, lin, c in MODES]


# ---------------------------------------------------------------------- models and helpers
def mlp(sizes, dtype=F64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


class DeepONet(torch.nn.Module):
    """Branch net on u, trunk net on y, dot-product head plus a bias."""

    def __init__(self, m=4, d=1, p=3):
        super().__init__()
        self.branch = mlp([m, 5, p], seed=1)
        self.trunk = mlp([d, 5, p], seed=2)
        self.bias = torch.nn.Parameter(torch.tensor([0.1], dtype=F64))

    def forward(self, u, y):
        return (self.branch(u) * self.trunk(y)).sum(-1, keepdim=True) + self.bias


def dense_jacobian(fn, params):
    """Dense (n, m) Jacobian of vec(fn(params)) by torch.func.jacrev."""
    out = fn(params)
    n = out.numel()
    jac = tfunc.jacrev(fn)(params)
    return torch.cat([jac[k].reshape(n, -1) for k in params], dim=1)


def module_fn(model, inputs, targets=None, names=None):
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    frozen = {k: v.detach() for k, v in params.items() if k not in names}

    def f(p):
        out = tfunc.functional_call(model, {**frozen, **p}, inputs)
        return out if targets is None else out - targets

    return f, {k: params[k].detach() for k in names}


def check_products(J, Jd, generator, rtol=1e-10):
    n, m = Jd.shape
    assert J.shape == (n, m)
    scale = float(Jd.abs().max())
    kw = dict(rtol=rtol, atol=rtol * scale * 10)
    v = torch.randn(m, dtype=F64, generator=generator).to(J.dtype)
    w = torch.randn(n, dtype=F64, generator=generator).to(J.dtype)
    V = torch.randn(m, 3, dtype=F64, generator=generator).to(J.dtype)
    W = torch.randn(n, 3, dtype=F64, generator=generator).to(J.dtype)
    torch.testing.assert_close(J.matvec(v), Jd @ v, **kw)
    torch.testing.assert_close(J.rmatvec(w), Jd.T @ w, **kw)
    torch.testing.assert_close(J.matmat(V), Jd @ V, **kw)
    torch.testing.assert_close(J.rmatmat(W), Jd.T @ W, **kw)
    torch.testing.assert_close(J.to_dense(), Jd, **kw)
    assert dottest(J, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def mlp_problem():
    model = mlp([2, 6, 6, 2])
    X = torch.rand(7, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    Y = torch.rand(7, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    return model, X, Y


# ---------------------------------------------------------------------- products
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("jvp,linearize,cache", MODES, ids=MODE_IDS)
def test_mlp_products(mlp_problem, generator, jvp, linearize, cache, batching):
    model, X, Y = mlp_problem
    J = JacobianOperator.from_module(
        model, X, Y, jvp=jvp, linearize=linearize, cache=cache, batch_size=2, batching=batching
    )
    assert J.batching == batching
    f, params = module_fn(model, (X,), Y)
    assert J.jvp_mode == jvp
    assert J.uses_linearize == (jvp == "forward" and cache and linearize is not False)
    assert J.param_names == list(params)
    torch.testing.assert_close(J.residual, f(params).detach().reshape(-1))
    check_products(J, dense_jacobian(f, params), generator)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("jvp,linearize,cache", MODES, ids=MODE_IDS)
def test_deeponet_products(generator, jvp, linearize, cache, batching):
    model = DeepONet()
    gen = torch.Generator().manual_seed(5)
    U, Yq = torch.rand(6, 4, dtype=F64, generator=gen), torch.rand(6, 1, dtype=F64, generator=gen)
    S = torch.rand(6, 1, dtype=F64, generator=gen)
    J = JacobianOperator.from_module(
        model,
        (U, Yq),
        S,
        jvp=jvp,
        linearize=linearize,
        cache=cache,
        chunk_size=4,
        batching=batching,
    )
    assert J.num_blocks == 2 and J.module_output_shape == (6, 1)
    f, params = module_fn(model, (U, Yq), S)
    check_products(J, dense_jacobian(f, params), generator)


def _pinn_problem():
    """Residual u_x - sin(x) written with torch.autograd.grad, and its torch.func twin."""
    net = mlp([1, 6, 1], seed=3)
    x = torch.linspace(0, 1, 5, dtype=F64)[:, None]
    # u_x does not depend on the output bias: leave it out (the check would reject it).
    params = {k: v.detach() for k, v in net.named_parameters() if k != "2.bias"}

    def autograd_residual(p):
        xx = x.clone().requires_grad_(True)
        u = tfunc.functional_call(net, p, (xx,), strict=False)
        (ux,) = torch.autograd.grad(u.sum(), xx, create_graph=True)
        return ux - torch.sin(x)

    def func_residual(p):
        def u1(xi, p):
            return tfunc.functional_call(net, p, (xi[None],), strict=False).reshape(())

        return tfunc.vmap(tfunc.grad(u1), in_dims=(0, None))(x, p) - torch.sin(x)

    return autograd_residual, func_residual, params


@pytest.mark.parametrize("cache", [True, False])
def test_autograd_residual_picks_double_vjp(generator, cache):
    autograd_residual, func_residual, params = _pinn_problem()
    J = JacobianOperator(autograd_residual, params, cache=cache, batch_size=2)
    assert J.jvp_mode == "double_vjp" and not J.uses_linearize
    torch.testing.assert_close(J.residual, func_residual(params).reshape(-1))
    check_products(J, dense_jacobian(func_residual, params), generator)
    # The torch.func twin runs in forward mode and gives the same operator.
    Jf = JacobianOperator(func_residual, params, cache=cache)
    assert Jf.jvp_mode == "forward"
    torch.testing.assert_close(Jf.to_dense(), J.to_dense())


def test_autograd_residual_forward_mode_raises():
    autograd_residual, _, params = _pinn_problem()
    with pytest.raises(RuntimeError):
        JacobianOperator(autograd_residual, params, jvp="forward")


def test_autograd_residual_unused_bias():
    net = mlp([1, 4, 1])
    x = torch.linspace(0, 1, 4, dtype=F64)[:, None]

    def residual(p):
        xx = x.clone().requires_grad_(True)
        (ux,) = torch.autograd.grad(
            tfunc.functional_call(net, p, (xx,)).sum(), xx, create_graph=True
        )
        return ux

    params = {k: v.detach() for k, v in net.named_parameters()}
    with pytest.raises(ValueError, match=r"\['2.bias'\]"):
        JacobianOperator(residual, params)


class _Square(torch.autograd.Function):
    """x**2 with forward and backward rules but no vmap rule."""

    @staticmethod
    def forward(x):
        return x**2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 2 * x * t


class _OldSquare(torch.autograd.Function):
    """Old-style autograd.Function: unusable under torch.func transforms."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_fallbacks_for_custom_functions(generator):
    A = torch.randn(4, 3, dtype=F64, generator=generator)
    params = {"x": torch.randn(3, dtype=F64, generator=generator)}
    Jd = A * 2 * params["x"]
    # No vmap rule: batched products fall back to a loop over columns, once, with a warning.
    J = JacobianOperator(
        lambda p: A @ _Square.apply(p["x"]), params, linearize=False, batching="vmap"
    )
    assert J.vmap_error is None  # construction takes single columns only
    with pytest.warns(RuntimeWarning, match="vmap cannot batch"):
        check_products(J, Jd, generator)
    assert J.jvp_mode == "forward" and "vmap support" in J.vmap_error
    # No torch.func support at all: "auto" falls back to double_vjp and says why.
    J = JacobianOperator(lambda p: A @ _OldSquare.apply(p["x"]), params)
    assert J.jvp_mode == "double_vjp" and "setup_context" in J.jvp_fallback_reason
    check_products(J, Jd, generator)


def test_row_blocks_of_callables(generator):
    autograd_residual, func_residual, params = _pinn_problem()
    model = mlp([1, 6, 1], seed=3)
    X = torch.rand(3, 1, dtype=F64, generator=generator)
    bc, _ = module_fn(model, (X,))
    J = JacobianOperator([func_residual, bc], params, jvp="double_vjp")
    assert J.num_blocks == 2 and J.row_slices == [slice(0, 5), slice(5, 8)]

    def stacked(p):
        return torch.cat([func_residual(p).reshape(-1), bc(p).reshape(-1)])

    check_products(J, dense_jacobian(stacked, params), generator)


def test_parameter_subset(mlp_problem, generator):
    model, X, Y = mlp_problem
    names = ["2.weight", "4.bias"]
    J = JacobianOperator.from_module(model, X, Y, params=names)
    assert J.param_names == names and J.shape == (14, 6 * 6 + 2)
    f, params = module_fn(model, (X,), Y, names)
    check_products(J, dense_jacobian(f, params), generator)


def test_float32(generator):
    model = mlp([2, 6, 1], dtype=torch.float32)
    X = torch.rand(9, 2, generator=generator)
    J = JacobianOperator.from_module(model, X)
    assert J.dtype == torch.float32 and J.residual.dtype == torch.float32
    f, params = module_fn(model, (X,))
    check_products(J, dense_jacobian(f, params).to(torch.float32), generator, rtol=1e-5)


# ---------------------------------------------------------------------- variants agree
def test_variants_agree(mlp_problem, generator):
    model, X, Y = mlp_problem
    ref = JacobianOperator.from_module(model, X, Y, linearize=False)
    Jd = ref.to_dense()
    for kwargs in [
        dict(linearize=True),
        dict(cache=False),
        dict(chunk_size=3),
        dict(chunk_size=1, batch_size=1),
        dict(chunk_size=100),
        dict(batch_size=4),
        dict(batching="vmap"),
        dict(batching="vmap", batch_size=2, chunk_size=3),
        dict(batching="loop", batch_size=2),
    ]:
        J = JacobianOperator.from_module(model, X, Y, **kwargs)
        torch.testing.assert_close(J.residual, ref.residual, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(J.to_dense(), Jd, rtol=1e-12, atol=1e-12, msg=str(kwargs))
        W = torch.randn(J.shape[0], 5, dtype=F64, generator=generator)
        torch.testing.assert_close(J.rmatmat(W), Jd.T @ W, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("jvp", ["forward", "double_vjp"])
def test_matmat_blocks(mlp_problem, generator, jvp):
    model, X, Y = mlp_problem
    J = JacobianOperator.from_module(model, X, Y, chunk_size=3, jvp=jvp)
    assert J.num_blocks == 3 and J.row_slices[-1] == slice(12, 14)
    V = torch.randn(J.shape[1], 4, dtype=F64, generator=generator)
    expected = J.matmat(V)
    J.reset_counts()
    pieces = list(J.matmat_blocks(V))
    assert [s for s, _ in pieces] == J.row_slices
    assert all(p.shape == (s.stop - s.start, 4) for s, p in pieces)
    torch.testing.assert_close(torch.cat([p for _, p in pieces]), expected)
    assert J.num_matvecs == 4 and J.num_rmatvecs == 0
    with pytest.raises(ValueError, match="expected shape"):
        J.matmat_blocks(V[:-1])


def test_counts(mlp_problem):
    model, X, Y = mlp_problem
    J = JacobianOperator.from_module(model, X, Y)
    assert J.num_matvecs == 0 and J.num_rmatvecs == 0  # construction is not counted
    J.matmat(torch.zeros(J.shape[1], 3, dtype=F64))
    J.rmatvec(torch.zeros(J.shape[0], dtype=F64))
    assert (J.num_matvecs, J.num_rmatvecs) == (3, 1)


# ---------------------------------------------------------------------- no mutation
def _snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    return state, flags, modes


def _assert_same(model, snap):
    state, flags, modes = snap
    now = model.state_dict(keep_vars=True)
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k].detach(), v), k
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    assert modes == [m.training for m in model.modules()]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("jvp", ["auto", "double_vjp"])
def test_model_unchanged(generator, jvp):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).to(F64)
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    model[3].bias.requires_grad_(False)
    X = torch.rand(6, 3, dtype=F64, generator=generator)
    snap = _snapshot(model)
    J = JacobianOperator.from_module(model, X, chunk_size=4, jvp=jvp)
    assert "3.bias" not in J.param_names  # frozen: requires_grad is False
    J.matmat(torch.randn(J.shape[1], 2, dtype=F64, generator=generator))
    J.rmatmat(torch.randn(J.shape[0], 2, dtype=F64, generator=generator))
    dottest(J)
    module_jvp(model, X, unflatten_params(torch.ones(J.shape[1], dtype=F64), J.params))
    _assert_same(model, snap)
    f, params = module_fn(model, (X,), None, J.param_names)
    torch.testing.assert_close(J.to_dense(), dense_jacobian(f, params))


def test_batchnorm_train_mode_unchanged(generator):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(F64)
    X = torch.rand(6, 3, dtype=F64, generator=generator)
    snap = _snapshot(model)
    J = JacobianOperator.from_module(model, X, batch_size=2)
    J.matmat(torch.randn(J.shape[1], 3, dtype=F64, generator=generator))
    J.rmatmat(torch.randn(J.shape[0], 3, dtype=F64, generator=generator))
    _assert_same(model, snap)
    assert model.training


def test_theta0_not_written(mlp_problem, generator):
    model, X, Y = mlp_problem
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    before = {k: v.clone() for k, v in params.items()}
    f, _ = module_fn(model, (X,), Y)
    J = JacobianOperator(f, params, jvp="double_vjp")
    J.to_dense()
    J.rmatvec(torch.ones(J.shape[0], dtype=F64))
    for k in params:
        assert torch.equal(params[k], before[k])
        assert J.params[k].data_ptr() == params[k].data_ptr()  # references, not copies
        assert not J.params[k].requires_grad


# ---------------------------------------------------------------------- module_jvp
def test_module_jvp_equals_output_jacobian(generator):
    model = DeepONet()
    U = torch.rand(5, 4, dtype=F64, generator=generator)
    Yq = torch.rand(5, 1, dtype=F64, generator=generator)
    Jq = JacobianOperator.from_module(model, (U, Yq))
    assert Jq.module_output_shape == (5, 1) and Jq.module is model
    v = torch.randn(Jq.shape[1], dtype=F64, generator=generator)
    out, jv = module_jvp(model, (U, Yq), unflatten_params(v, Jq.params))
    torch.testing.assert_close(out, model(U, Yq).detach())
    torch.testing.assert_close(jv.reshape(-1), Jq @ v)
    # A subset of tangents, evaluated at other parameter values.
    shifted = {"bias": torch.tensor([2.0], dtype=F64)}
    out2, jv2 = module_jvp(model, (U, Yq), {"bias": torch.ones(1, dtype=F64)}, params=shifted)
    torch.testing.assert_close(out2, out + 1.9)
    torch.testing.assert_close(jv2, torch.ones_like(out))
    with pytest.raises(ValueError, match="unknown"):
        module_jvp(model, (U, Yq), {"nope": torch.ones(1, dtype=F64)})
    with pytest.raises(ValueError, match="expected shape"):
        module_jvp(model, (U, Yq), {"bias": torch.ones(2, dtype=F64)})


# ---------------------------------------------------------------------- flatten helpers
def test_flatten_unflatten_roundtrip(generator):
    like = {"a": torch.randn(2, 3, generator=generator), "b": torch.randn(4, generator=generator)}
    vec = flatten_params(like)
    assert vec.shape == (10,)
    back = unflatten_params(vec, like)
    assert list(back) == ["a", "b"]
    for k in like:
        assert torch.equal(back[k], like[k])
    assert back["a"].data_ptr() == vec.data_ptr()  # views
    with pytest.raises(ValueError, match=r"expected shape \(10,\).*got \(9,\)"):
        unflatten_params(vec[:9], like)
    with pytest.raises(ValueError, match="empty"):
        flatten_params({})


# ---------------------------------------------------------------------- bad inputs
def test_nonfinite_residual_names_rows(mlp_problem):
    model, X, Y = mlp_problem
    Y = Y.clone()
    Y[1, 0] = float("nan")
    Y[4, 1] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 7 residual rows .*rows \[1, 4\]"):
        JacobianOperator.from_module(model, X, Y, chunk_size=3)
    JacobianOperator.from_module(model, X, Y, check=False)  # the check can be skipped


def test_nonfinite_flat_residual_names_entries():
    params = {"x": torch.ones(3, dtype=F64)}
    with pytest.raises(ValueError, match=r"1 of 3 residual entries .*entries \[2\]"):
        JacobianOperator(lambda p: p["x"] / torch.tensor([1.0, 1.0, 0.0], dtype=F64), params)


def test_dtype_mismatch():
    params = {"x": torch.ones(3, dtype=F64)}
    with pytest.raises(TypeError, match="float64.*float32"):
        JacobianOperator(lambda p: (2 * p["x"]).float(), params)
    with pytest.raises(TypeError, match="one dtype"):
        JacobianOperator(lambda p: p["x"], {"x": torch.ones(2), "y": torch.ones(2, dtype=F64)})
    model = mlp([2, 3, 1])
    with pytest.raises(TypeError, match="inputs\\[0\\]: expected .*float64, got torch.float32"):
        JacobianOperator.from_module(model, torch.ones(4, 2))


def test_targets_shape_mismatch(mlp_problem):
    model, X, Y = mlp_problem
    with pytest.raises(ValueError, match=r"targets: expected .*\(7, 2\), got \(7, 1\)"):
        JacobianOperator.from_module(model, X, Y[:, :1])
    with pytest.raises(ValueError, match=r"targets: expected .*\(7, 2\), got \(7, 1\)"):
        JacobianOperator.from_module(model, X, Y[:, :1], chunk_size=2)
    with pytest.raises(ValueError, match="targets: expected"):
        JacobianOperator.from_module(model, X, Y[:5])


def test_empty_data_and_params(mlp_problem):
    model, X, Y = mlp_problem
    with pytest.raises(ValueError, match="empty data"):
        JacobianOperator.from_module(model, X[:0], Y[:0])
    with pytest.raises(ValueError, match="empty dict"):
        JacobianOperator(lambda p: p, {})
    with pytest.raises(ValueError, match="non-empty residual"):
        JacobianOperator(lambda p: p["x"][:0], {"x": torch.ones(3, dtype=F64)})
    with pytest.raises(ValueError, match="leading dimension 7"):
        JacobianOperator.from_module(DeepONet(), (torch.ones(7, 4, dtype=F64), X[:3, :1]))


def test_dropout_in_train_mode_is_nondeterministic():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    X = torch.rand(5, 2)
    with pytest.raises(ValueError, match="change between identical calls.*model.eval"):
        JacobianOperator.from_module(model, X)
    model.eval()
    JacobianOperator.from_module(model, X)


def test_unused_parameter():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(2, 1)
            self.unused = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.used(x)

    model = Net().to(F64)
    X = torch.rand(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\['unused.weight', 'unused.bias'\].*params="):
        JacobianOperator.from_module(model, X)
    J = JacobianOperator.from_module(model, X, params=["used.weight", "used.bias"])
    assert J.shape == (4, 3)


def test_unknown_param_name(mlp_problem):
    model, X, Y = mlp_problem
    with pytest.raises(ValueError, match=r"'0.weight'.*unknown \['0.wieght'\]"):
        JacobianOperator.from_module(model, X, Y, params=["0.wieght"])


def test_bad_options(mlp_problem):
    model, X, Y = mlp_problem
    with pytest.raises(ValueError, match="jvp"):
        JacobianOperator.from_module(model, X, Y, jvp="reverse")
    with pytest.raises(ValueError, match="linearize"):
        JacobianOperator.from_module(model, X, Y, linearize="yes")
    with pytest.raises(ValueError, match="linearize"):
        JacobianOperator.from_module(model, X, Y, linearize=True, cache=False)
    with pytest.raises(ValueError, match="batch_size"):
        JacobianOperator.from_module(model, X, Y, batch_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        JacobianOperator.from_module(model, X, Y, chunk_size=0)
    with pytest.raises(TypeError, match="residual_fn"):
        JacobianOperator("not callable", {"x": torch.ones(2)})


def test_docstring_examples():
    result = doctest.testmod(jac_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
