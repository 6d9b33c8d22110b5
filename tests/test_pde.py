"""lsr_scale.pde: input derivatives and stacked residuals against autograd references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from lsr_scale import pde
from lsr_scale.models._deeponet import DeepONet


def _mlp(d_in=2, width=8, depth=2, dtype=torch.float64, act=nn.Tanh):
    layers = [nn.Linear(d_in, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).to(dtype)


def _autograd_derivs(net, x):
    """Reference value, gradient and Laplacian with torch.autograd.grad."""
    x = x.clone().requires_grad_(True)
    u = net(x)[:, 0]
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    lap = torch.zeros_like(u)
    for i in range(x.shape[1]):
        (gi,) = torch.autograd.grad(g[:, i].sum(), x, create_graph=True)
        lap = lap + gi[:, i]
    return u, g, lap


@pytest.fixture
def net_and_points(generator):
    torch.manual_seed(0)
    net = _mlp()
    x = torch.rand(7, 2, generator=generator, dtype=torch.float64)
    return net, x


def test_value_gradient_laplacian_match_autograd(net_and_points):
    net, x = net_and_points
    u_ref, g_ref, lap_ref = _autograd_derivs(net, x)
    f = pde.scalar_fn(net)
    torch.testing.assert_close(pde.value(f, x), u_ref.detach())
    torch.testing.assert_close(pde.gradient(f, x), g_ref.detach())
    torch.testing.assert_close(pde.laplacian(f, x), lap_ref.detach())
    v, g = pde.value_and_gradient(f, x)
    torch.testing.assert_close(v, u_ref.detach())
    torch.testing.assert_close(g, g_ref.detach())
    v, lap = pde.value_and_laplacian(f, x)
    torch.testing.assert_close(lap, lap_ref.detach())
    u, g, lap = pde.forward_laplacian(net, x)
    torch.testing.assert_close(u, u_ref.detach())
    torch.testing.assert_close(g, g_ref.detach())
    torch.testing.assert_close(lap, lap_ref.detach())


def test_partials_and_hessian_on_closed_form():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)

    def f(p):
        return torch.sin(p[0]) * p[1] ** 3

    s, c, y = torch.sin(x[:, 0]), torch.cos(x[:, 0]), x[:, 1]
    torch.testing.assert_close(pde.partial(f, x, dims=(0,)), c * y**3)
    torch.testing.assert_close(pde.partial(f, x, dims=(1, 1)), 6 * s * y)
    torch.testing.assert_close(pde.partial(f, x, dims=(0, 1)), 3 * c * y**2)
    torch.testing.assert_close(pde.partial(f, x, dims=()), s * y**3)
    h = pde.hessian(f, x)
    torch.testing.assert_close(h[:, 0, 1], h[:, 1, 0])
    torch.testing.assert_close(h[:, 0, 0], -s * y**3)
    with pytest.raises(ValueError, match="dims"):
        pde.partial(f, x, dims=(2,))
    with pytest.raises(ValueError, match="2-D"):
        pde.gradient(f, x[0])


@pytest.mark.parametrize("route", ["vmap", "forward"])
def test_poisson_residual_parameter_jacobian_matches_autograd(net_and_points, route):
    """d/dtheta of -lap u - f, through torch.func, equals a double-backward reference."""
    net, x = net_and_points
    params = {k: v.detach() for k, v in net.named_parameters()}
    rhs = torch.sin(x[:, 0])

    def residual(p):
        if route == "forward":
            lap = pde.forward_laplacian(net, x, p)[2]
        else:
            lap = pde.laplacian(pde.scalar_fn(net, p), x)
        return -lap - rhs

    jac = jacrev(residual)(params)
    # reference: per-row gradient of the autograd Laplacian w.r.t. the parameters
    _, _, lap = _autograd_derivs(net, x)
    r = -lap - rhs
    torch.testing.assert_close(residual(params), r.detach())
    names = list(params)
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(
            r[i],
            [dict(net.named_parameters())[n] for n in names],
            retain_graph=True,
            allow_unused=True,
        )
        for n, gr in zip(names, grads):
            torch.testing.assert_close(jac[n][i], torch.zeros_like(jac[n][i]) if gr is None else gr)

    # a forward-mode JVP in the parameters (forward-over-reverse) agrees with the Jacobian
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    _, jv = torch.func.jvp(residual, (params,), (tangent,))
    ref = sum((jac[n].reshape(x.shape[0], -1) @ tangent[n].reshape(-1)) for n in names)
    torch.testing.assert_close(jv, ref)


def test_deeponet_trunk_derivative_under_parameter_transforms(generator):
    torch.manual_seed(1)
    net = DeepONet([4, 8, 8], [1, 8, 8]).double()
    u = torch.randn(1, 4, generator=generator, dtype=torch.float64)
    y = torch.rand(6, 1, generator=generator, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def residual(p):
        f = pde.scalar_fn(net, p)  # f(y, u_row): the trunk input comes last
        return pde.gradient(f, y, u.expand(y.shape[0], -1))[:, 0]

    yy = y.clone().requires_grad_(True)
    out = net(u, yy)[:, 0]
    (dy,) = torch.autograd.grad(out.sum(), yy, create_graph=True)
    torch.testing.assert_close(residual(params), dy[:, 0].detach())
    jac = jacrev(residual)(params)
    g = torch.autograd.grad(dy[2, 0], list(net.parameters()), allow_unused=True)
    for (n, _), gr in zip(net.named_parameters(), g):
        torch.testing.assert_close(jac[n][2], torch.zeros_like(jac[n][2]) if gr is None else gr)


def test_stack_residuals_weights_and_split():
    p = {"a": torch.tensor(2.0, dtype=torch.float64)}
    fn, split = pde.stack_residuals(
        {
            "pde": (lambda q: q["a"] * torch.ones(30, dtype=torch.float64), 1.0),
            "bc": pde.ResidualBlock(lambda q: q["a"] * torch.ones(10, dtype=torch.float64), 5.0),
        },
        parts=True,
    )
    f = fn(p)
    assert f.shape == (40,)
    torch.testing.assert_close(f[0], 2.0 * torch.tensor(math.sqrt(40 / 30), dtype=torch.float64))
    torch.testing.assert_close(
        f[-1], 2.0 * torch.tensor(math.sqrt(5 * 40 / 10), dtype=torch.float64)
    )
    # 0.5 ||f||^2 == 0.5 N_total sum_i lambda_i mean(r_i^2)
    torch.testing.assert_close(
        0.5 * f.square().sum(), 0.5 * 40 * (4.0 + 5 * 4.0) * torch.ones((), dtype=torch.float64)
    )
    parts = split(f)
    torch.testing.assert_close(parts["bc"], 2.0 * torch.ones(10, dtype=torch.float64))
    with pytest.raises(TypeError):
        pde.stack_residuals([42])
    with pytest.raises(ValueError):
        pde.ResidualBlock(lambda q: q, -1.0)
    with pytest.raises(ValueError):
        pde.stack_residuals([])


def test_forward_laplacian_rejects_other_modules():
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    assert not pde.supports_forward_laplacian(net)
    assert pde.supports_forward_laplacian(_mlp())
    with pytest.raises(TypeError, match="Sequential"):
        pde.forward_laplacian(net, torch.zeros(2, 1))
