"""JacobianOperator's documented rules: back-end choice, linearize, vmap fallback, checks.

Every rule here is deterministic: no timing, no random probe vectors. Products are compared
with dense ``torch.func.jacrev`` Jacobians.
"""

from __future__ import annotations

import doctest
import math
import warnings

import pytest
import torch
from torch import func as tfunc

import lsr_scale.operators._backend as backend_module
import lsr_scale.operators._module as module_module
import lsr_scale.operators._params as params_module
from lsr_scale.operators import JacobianOperator
from lsr_scale.operators._backend import Backend, is_vmap_error, probe_vector
from lsr_scale.operators._forward import is_untransformable
from lsr_scale.testing import dottest

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


def dense_jacobian(fn, params):
    out = fn(params)
    jac = tfunc.jacrev(fn)(params)
    return torch.cat([jac[k].reshape(out.numel(), -1) for k in params], dim=1)


def assert_products(J, Jd, generator, rtol=1e-10):
    kw = dict(rtol=rtol, atol=rtol * float(Jd.abs().max()) * 10)
    V = torch.randn(J.shape[1], 3, dtype=F64, generator=generator).to(J.dtype)
    W = torch.randn(J.shape[0], 3, dtype=F64, generator=generator).to(J.dtype)
    torch.testing.assert_close(J.matmat(V), Jd @ V, **kw)
    torch.testing.assert_close(J.rmatmat(W), Jd.T @ W, **kw)
    torch.testing.assert_close(J.to_dense(), Jd, **kw)


def mlp(sizes, dtype=F64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


@pytest.fixture
def linear_problem(generator):
    A = torch.randn(5, 3, dtype=F64, generator=generator)
    params = {"x": torch.randn(3, dtype=F64, generator=generator)}
    return A, params


# ---------------------------------------------------------------------- linearize rule
@pytest.mark.parametrize("cache", [True, False])
def test_linearize_auto_is_a_rule_not_a_timing(linear_problem, generator, cache):
    A, params = linear_problem

    def f(p):
        return A @ torch.tanh(p["x"])

    for _ in range(2):  # the same answer every time: it depends on nothing measured
        J = JacobianOperator(f, params, cache=cache)
        assert J.jvp_mode == "forward" and J.uses_linearize == cache
        assert J.linearize_error is None and not hasattr(J, "linearize_timing")
    assert_products(J, dense_jacobian(f, params), generator)
    J = JacobianOperator(f, params, linearize=False)
    assert not J.uses_linearize
    assert_products(J, dense_jacobian(f, params), generator)


def test_linearize_untraceable_residual(linear_problem, generator):
    A, params = linear_problem

    def f(p):  # data-dependent control flow: fine for jvp/vjp, not for linearize's tracing
        return A @ p["x"] * (2.0 if float(p["x"].detach().sum()) > 0 else 3.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a documented fallback: no warning
        J = JacobianOperator(f, params)
    assert J.jvp_mode == "forward" and not J.uses_linearize and J.linearize_error
    assert_products(J, dense_jacobian(f, params), generator)
    with pytest.raises(RuntimeError, match="linearize=True: expected") as info:
        JacobianOperator(f, params, linearize=True)
    assert type(info.value) is RuntimeError


# ---------------------------------------------------------------------- jvp="auto" rule
def _outside_leaf_problem():
    """u_x - cos(x) with torch.autograd.grad on an input that requires grad from outside."""
    net = mlp([1, 5, 1], seed=4)
    x = torch.linspace(0, 1, 6, dtype=F64)[:, None]
    xg = x.clone().requires_grad_(True)
    params = {k: v.detach() for k, v in net.named_parameters() if k != "2.bias"}

    def autograd_residual(p):
        u = tfunc.functional_call(net, p, (xg,), strict=False)
        (ux,) = torch.autograd.grad(u.sum(), xg, create_graph=True)
        return ux - torch.cos(x)

    def func_residual(p):
        def u1(xi, p):
            return tfunc.functional_call(net, p, (xi[None],), strict=False).reshape(())

        return tfunc.vmap(tfunc.grad(u1), in_dims=(0, None))(x, p) - torch.cos(x)

    return autograd_residual, func_residual, params


@pytest.mark.parametrize("cache", [True, False])
def test_auto_falls_back_for_autograd_on_outside_tensors(generator, cache):
    autograd_residual, func_residual, params = _outside_leaf_problem()
    J = JacobianOperator(autograd_residual, params, cache=cache, batch_size=2)
    assert J.jvp_mode == "double_vjp" and J.jvp_fallback_reason
    assert is_untransformable(RuntimeError(J.jvp_fallback_reason))
    assert_products(J, dense_jacobian(func_residual, params), generator)


def test_auto_falls_back_for_ops_without_forward_ad(generator):
    params = {"x": torch.rand(6, dtype=F64, generator=generator) + 0.5}
    grid = torch.full((1, 2, 2, 2), 0.3, dtype=F64)

    def f(p):
        img = p["x"].reshape(1, 1, 2, 3)
        return torch.nn.functional.grid_sample(img, grid, align_corners=False).reshape(-1)

    J = JacobianOperator(f, params, check=False)  # the corner pixels do not enter the output
    assert J.jvp_mode == "double_vjp" and "forward AD" in J.jvp_fallback_reason
    assert_products(J, dense_jacobian(f, params), generator)
    with pytest.raises(NotImplementedError, match="forward AD"):
        JacobianOperator(f, params, jvp="forward", check=False)


def test_auto_reports_when_neither_back_end_works(generator):
    params = {"x": torch.rand(4, dtype=F64, generator=generator) + 0.5}
    with pytest.raises(RuntimeError, match="got errors from both"):
        JacobianOperator(lambda p: torch.special.gammainc(p["x"], torch.ones_like(p["x"])), params)


@pytest.mark.parametrize("error", [ValueError, TypeError, RuntimeError])
def test_auto_never_falls_back_on_other_errors(linear_problem, error):
    A, params = linear_problem
    calls = []

    def flaky(p):  # fine on the first (plain) call, fails in the first transform
        calls.append(1)
        if len(calls) > 1:
            raise error("the user's own error")
        return A @ p["x"]

    with pytest.raises(error, match="the user's own error") as info:
        JacobianOperator(flaky, params)
    assert type(info.value) is error
    if error is RuntimeError:
        assert "jvp='double_vjp'" in "".join(getattr(info.value, "__notes__", []))


def test_is_untransformable_is_narrow():
    assert is_untransformable(RuntimeError("... being transformed by a functorch transform ..."))
    assert is_untransformable(NotImplementedError("Trying to use forward AD with igamma ..."))
    assert not is_untransformable(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_untransformable(ValueError("Trying to use forward AD with igamma ..."))
    assert not is_untransformable(torch.cuda.OutOfMemoryError("forward AD: out of memory"))


# ---------------------------------------------------------------------- vmap fallback
def test_vmap_fallback_only_for_vmap_errors():
    def column(j):
        return torch.tensor([float(j)])

    def vmap_fails():
        raise RuntimeError("vmap: It looks like you're calling .item() on a Tensor")

    def bug():
        raise RuntimeError("an ordinary bug")

    b = Backend([], {}, [], cache=True)
    with pytest.raises(RuntimeError, match="an ordinary bug"):
        b.columns(3, bug, column)
    assert b.vmap_error is None  # an ordinary error never switches vmap off

    def column_bug(j):
        raise ValueError("the loop fails too")

    with pytest.raises(ValueError, match="the loop fails too"):
        b.columns(3, vmap_fails, column_bug)
    assert b.vmap_error is None  # the loop failing as well means the bug is not vmap's

    with pytest.warns(RuntimeWarning, match="vmap cannot batch"):
        out = b.columns(3, vmap_fails, column)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 2.0]]))
    assert ".item()" in b.vmap_error
    torch.testing.assert_close(b.columns(2, bug, column), torch.tensor([[0.0, 1.0]]))

    assert is_vmap_error(NotImplementedError("Batching rule not implemented for aten::foo"))
    assert not is_vmap_error(torch.cuda.OutOfMemoryError("vmap: out of memory"))
    assert not is_vmap_error(ValueError("vmap"))


# ---------------------------------------------------------------------- determinism check
def _trained_poisson_pinn(steps=200, n=100, width=16):
    """A tanh MLP trained briefly with Adam on u'' = -pi^2 sin(pi x), u(+-1) = 0, float32.

    The residual ``u'' - f`` is written with nested ``torch.func.grad`` under ``vmap``; both
    terms are about 10 while the trained residual is about 0.2 by cancellation.
    """
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 1),
    )
    x = torch.linspace(-1, 1, n)
    source = -(math.pi**2) * torch.sin(math.pi * x)
    ends = torch.tensor([[-1.0], [1.0]])

    def residual(p):
        def u(xi):
            return tfunc.functional_call(net, p, (xi.reshape(1, 1),)).reshape(())

        return tfunc.vmap(tfunc.grad(tfunc.grad(u)))(x) - source

    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        bc = tfunc.functional_call(net, params, (ends,))
        loss = residual(params).square().mean() + bc.square().mean()
        loss.backward()
        opt.step()
    return residual, {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("jvp", ["auto", "double_vjp"])
def test_trained_float32_pinn_is_accepted(generator, jvp):
    residual, params = _trained_poisson_pinn()
    r = residual(params)
    assert r.dtype == torch.float32 and float(r.abs().max()) < 0.5  # small by cancellation
    # u'' does not depend on the output bias: leave it out (the check would reject it).
    params = {k: v for k, v in params.items() if k != "4.bias"}
    J = JacobianOperator(residual, params, jvp=jvp)  # the old route comparison refused this
    assert J.jvp_mode == ("forward" if jvp == "auto" else jvp)
    assert J.shape == (100, 16 * 2 + 16 * 17 + 16)
    torch.testing.assert_close(J.residual, r)
    assert dottest(J, generator=generator, rtol=1e-3)


def test_nondeterministic_residual_is_refused():
    residual, params = _trained_poisson_pinn(steps=20)
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="change between identical calls") as info:
        JacobianOperator(lambda p: residual(p) + 1e-2 * torch.rand(100), params, check=True)
    assert type(info.value) is ValueError


def test_determinism_tolerance_scales_with_the_terms(generator):
    """Two evaluation orders differ by rounding of terms of size 10: accepted."""
    x = torch.linspace(0, 3, 50)
    params = {"w": torch.tensor([1.0])}
    source = 10 * torch.sin(x) + 1e-3 * torch.cos(7 * x)
    calls = []

    def residual(p):  # alternates between two summation orders, as atomics on a GPU may
        calls.append(1)
        u = 10 * torch.sin(p["w"] * x)
        return (u + 10.0) - (source + 10.0) if len(calls) % 2 else u - source

    a, b = residual(params), residual(params)
    assert not torch.equal(a, b)  # they do differ, by a few ulps of 10
    J = JacobianOperator(residual, params)
    assert J.shape == (50, 1)


# ---------------------------------------------------------------------- no randomness
@pytest.mark.parametrize("jvp", ["auto", "double_vjp"])
def test_construction_uses_no_random_numbers(linear_problem, jvp):
    A, params = linear_problem
    torch.manual_seed(123)
    state = torch.get_rng_state()
    J = JacobianOperator(lambda p: A @ torch.sin(p["x"]), params, jvp=jvp)
    J.to_dense()
    assert torch.equal(torch.get_rng_state(), state)


def test_probe_vector_is_fixed():
    v = probe_vector(1000, F64, "cpu")
    assert torch.equal(v, probe_vector(1000, F64, "cpu"))
    assert bool((v.abs() < 0.5).all()) and bool((v != 0).all())
    assert v.unique().numel() == 1000
    assert probe_vector(3, torch.float32, "cpu").dtype == torch.float32


# ---------------------------------------------------------------------- public errors
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("jvp", ["auto", "double_vjp"])
def test_wrong_targets_raise_public_value_error(chunk_size, jvp):
    model = mlp([2, 4, 2])
    X = torch.rand(7, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"expected the model output's shape \(7, 2\)") as info:
        JacobianOperator.from_module(
            model, X, torch.zeros(7, 3, dtype=F64), chunk_size=chunk_size, jvp=jvp
        )
    assert type(info.value) is ValueError


def test_old_import_paths():
    from lsr_scale.operators._jacobian import (  # noqa: F401
        _select_param_names,
        flatten_params,
        module_jvp,
        unflatten_params,
    )

    assert _select_param_names({"a": torch.ones(1, requires_grad=True)}, None) == ["a"]


@pytest.mark.parametrize("module", [params_module, module_module, backend_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
