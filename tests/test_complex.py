"""Complex parameters (Fourier layers): refined as pairs of real parameters.

Products are checked against dense ``torch.func.jacrev`` Jacobians of the real-view function
(written here independently, with ``torch.view_as_complex``) and against finite differences;
a small trained Fourier-layer model is refined end to end.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import func as tfunc

import lsr_scale as ls
from lsr_scale.operators import JacobianOperator, flatten_params, module_jvp, unflatten_params
from lsr_scale.testing import dottest

F64, F32 = torch.float64, torch.float32

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


# ---------------------------------------------------------------------- a hand-written FNO
class SpectralConv1d(torch.nn.Module):
    """rfft -> the lowest ``modes`` frequencies times complex weights -> irfft."""

    def __init__(self, width, modes, generator, dtype):
        super().__init__()
        self.modes = modes
        w = torch.randn(width, width, modes, dtype=dtype.to_complex(), generator=generator)
        self.weight = torch.nn.Parameter(w / width)

    def forward(self, h):  # h: (batch, width, points)
        hf = torch.fft.rfft(h, dim=-1)
        # (modes, batch, in) @ (modes, in, out): one complex matrix product per mode
        low = hf[..., : self.modes].permute(2, 0, 1) @ self.weight.permute(2, 0, 1)
        out = torch.nn.functional.pad(low.permute(1, 2, 0), (0, hf.shape[-1] - self.modes))
        return torch.fft.irfft(out, n=h.shape[-1], dim=-1)


class FourierNet(torch.nn.Module):
    """Real lifting of (u, x), Fourier layers (spectral + pointwise, tanh), real projection."""

    def __init__(self, width=8, modes=6, layers=2, seed=0, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.lift = torch.nn.Linear(2, width, dtype=dtype)
        self.spectral = torch.nn.ModuleList(
            SpectralConv1d(width, modes, g, dtype) for _ in range(layers)
        )
        self.pointwise = torch.nn.ModuleList(
            torch.nn.Conv1d(width, width, 1, dtype=dtype) for _ in range(layers)
        )
        self.proj = torch.nn.Linear(width, 1, dtype=dtype)

    def forward(self, u):  # u: (batch, points) -> (batch, points)
        grid = torch.linspace(0, 1, u.shape[1], dtype=u.dtype).expand_as(u)
        h = self.lift(torch.stack([u, grid], dim=-1)).transpose(1, 2)
        for spectral, pointwise in zip(self.spectral, self.pointwise):
            h = torch.tanh(spectral(h) + pointwise(h))
        return self.proj(h.transpose(1, 2)).squeeze(-1)


def smoothing_data(n, points, generator, dtype=F64, modes=2):
    """Random periodic u with ``modes`` Fourier modes; target v + v^2/2, v = heat flow of u."""
    k = torch.arange(1, modes + 1, dtype=dtype)
    a = torch.randn(n, modes, 2, dtype=dtype, generator=generator) / k[:, None]
    x = torch.linspace(0, 2 * math.pi, points + 1, dtype=dtype)[:-1]
    u = (a[..., :1] * torch.sin(k[:, None] * x) + a[..., 1:] * torch.cos(k[:, None] * x)).sum(1)
    freq = torch.fft.rfftfreq(points, 1.0 / points).to(dtype)
    v = torch.fft.irfft(torch.fft.rfft(u) * torch.exp(-0.02 * freq**2), n=points)
    return u, v + 0.5 * v**2


def real_view_residual(model, u, y):
    """``p -> model(u) - y`` over real parameters, complex ones as (..., 2) pairs, and those
    parameters: the reference the operator must reproduce."""
    complex_names = [k for k, p in model.named_parameters() if p.is_complex()]
    params = {
        k: torch.view_as_real(p.detach()).clone() if p.is_complex() else p.detach()
        for k, p in model.named_parameters()
    }

    def f(p):
        q = {
            k: torch.view_as_complex(v.contiguous()) if k in complex_names else v
            for k, v in p.items()
        }
        return tfunc.functional_call(model, q, (u,)) - y

    return f, params


def dense_jacobian(f, params):
    out = f(params)
    jac = tfunc.jacrev(f)(params)
    return torch.cat([jac[k].reshape(out.numel(), -1) for k in params], dim=1)


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(11)
    model = FourierNet(width=3, modes=3, layers=1, seed=2)
    u, y = smoothing_data(4, 8, g)
    return model, u, y


# ---------------------------------------------------------------------- products
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("jvp,cache", [("forward", True), ("forward", False), ("double_vjp", True)])
def test_products_against_dense_reference(small, generator, jvp, cache, batching):
    model, u, y = small
    J = JacobianOperator.from_module(
        model, u, y, jvp=jvp, cache=cache, batching=batching, batch_size=4, chunk_size=3
    )
    f, params = real_view_residual(model, u, y)
    Jd = dense_jacobian(f, params)
    assert J.shape == Jd.shape == (32, (2 * 3 + 3) + 3 * 3 * 3 * 2 + (3 * 3 + 3) + (3 + 1))
    assert J.dtype == F64 and J.jvp_mode == jvp
    assert J.complex_params == ("spectral.0.weight",)
    torch.testing.assert_close(J.residual, f(params).reshape(-1))
    kw = dict(rtol=1e-10, atol=1e-12)
    V = torch.randn(J.shape[1], 5, dtype=F64, generator=generator)
    W = torch.randn(J.shape[0], 5, dtype=F64, generator=generator)
    torch.testing.assert_close(J.matmat(V), Jd @ V, **kw)
    torch.testing.assert_close(J.rmatmat(W), Jd.T @ W, **kw)
    torch.testing.assert_close(J.to_dense(), Jd, **kw)
    assert dottest(J, generator=torch.Generator().manual_seed(7))


def test_columns_are_real_and_imaginary_parts(small):
    """Finite differences in float64: column 2j is d/d Re(w_j), column 2j + 1 is d/d Im(w_j)."""
    model, u, y = small
    J = JacobianOperator.from_module(model, u, y)
    Jd = J.to_dense()
    names = J.param_names
    offset = sum(
        2 * p.numel() if p.is_complex() else p.numel()
        for k, p in J.params.items()
        if names.index(k) < names.index("spectral.0.weight")
    )
    weight = J.params["spectral.0.weight"]
    h = 1e-6
    for j, part in [(0, 1), (0, 1j), (7, 1), (19, 1j)]:

        def at(t, j=j, part=part):
            w = weight.clone().reshape(-1)
            w[j] += t * part
            p = {**J.params, "spectral.0.weight": w.reshape(weight.shape)}
            return tfunc.functional_call(model, p, (u,)).reshape(-1)

        fd = (at(h) - at(-h)) / (2 * h)
        col = offset + 2 * j + (1 if part == 1j else 0)
        torch.testing.assert_close(Jd[:, col], fd, rtol=1e-6, atol=1e-8)


def test_residual_fn_with_complex_params(small, generator):
    model, u, y = small
    params = {k: p.detach() for k, p in model.named_parameters()}

    def residual(p):
        assert p["spectral.0.weight"].is_complex()  # the residual sees complex parameters
        return tfunc.functional_call(model, p, (u,)) - y

    J = JacobianOperator(residual, params)
    f, real_params = real_view_residual(model, u, y)
    torch.testing.assert_close(J.to_dense(), dense_jacobian(f, real_params))
    assert J.batching == "loop"


# ---------------------------------------------------------------------- dtypes and checks
def test_precision_rule():
    w = torch.randn(2, 3, dtype=torch.complex64)
    b = torch.randn(3)

    def f(p):
        return (p["w"] @ b.to(p["w"].dtype)).abs() + p["b"].sum()

    J = JacobianOperator(f, {"w": w, "b": torch.randn(2)})
    assert J.dtype == F32 and J.shape == (2, 14)
    J = JacobianOperator(lambda p: (p["w"] * p["w"].conj()).real.reshape(-1), {"w": w})
    assert J.dtype == F32 and J.shape == (6, 12)
    with pytest.raises(TypeError, match=r"one dtype.*complex64 with float32.*float64"):
        JacobianOperator(f, {"w": w, "b": torch.randn(2, dtype=F64)})
    with pytest.raises(TypeError, match="one dtype"):
        flatten_params({"w": w.to(torch.complex128), "b": b})
    with pytest.raises(TypeError, match=r"\(real\) dtype torch.float32, got torch.complex64"):
        JacobianOperator(lambda p: p["w"].sum(-1), {"w": w})
    with pytest.raises(TypeError, match="floating or complex dtype"):
        JacobianOperator(f, {"w": torch.ones(2, dtype=torch.int64)})


def test_flatten_unflatten_complex(generator):
    params = {
        "a": torch.randn(3, dtype=F64, generator=generator),
        "z": torch.randn(2, 2, dtype=torch.complex128, generator=generator),
        "b": torch.randn(1, dtype=F64, generator=generator),
    }
    vec = flatten_params(params)
    assert vec.dtype == F64 and vec.shape == (3 + 8 + 1,)
    torch.testing.assert_close(vec[3:11], torch.view_as_real(params["z"]).reshape(-1))
    back = unflatten_params(vec, params)
    assert back["z"].dtype == torch.complex128
    for k in params:
        torch.testing.assert_close(back[k], params[k])
    # the offset of z is odd: still exact (torch.complex, not view_as_complex)
    odd = {"a": params["a"][:1], **{k: params[k] for k in ("z", "b")}}
    torch.testing.assert_close(unflatten_params(flatten_params(odd), odd)["z"], params["z"])


def test_module_jvp_complex_tangents(small, generator):
    model, u, _ = small
    Jq = JacobianOperator.from_module(model, u)  # the output Jacobian
    tangents = {
        k: torch.randn(p.shape, dtype=p.dtype, generator=generator)
        for k, p in model.named_parameters()
    }
    out, dout = module_jvp(model, u, tangents)
    torch.testing.assert_close(out, model(u))
    torch.testing.assert_close(dout.reshape(-1), Jq.matvec(flatten_params(tangents)))
    with pytest.raises(ValueError, match="tangents.*complex128"):
        module_jvp(model, u, {"spectral.0.weight": torch.zeros(3, 3, 3, dtype=F64)})


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained():
    """A Fourier-layer model trained briefly (Adam) on 96 functions of 16 points."""
    g = torch.Generator().manual_seed(0)
    u, y = smoothing_data(96, 16, g)
    u_test, y_test = smoothing_data(200, 16, g)
    model = FourierNet(width=8, modes=6, layers=2, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        ((model(u) - y) ** 2).mean().backward()
        opt.step()
    refined = ls.refine(model, data=(u, y), generator=torch.Generator().manual_seed(1))
    return model, refined, (u, y), (u_test, y_test)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_refine_fourier_model(trained):
    model, refined, _, (u_test, y_test) = trained
    with torch.no_grad():
        before = rel(model(u_test), y_test)
        after = rel(refined(u_test), y_test)
    assert after < before / 2, (before, after)
    assert refined.delta.dtype == F64
    assert refined.info["n_params"] == sum(
        2 * p.numel() if p.is_complex() else p.numel() for p in model.parameters()
    )


def test_refined_model_complex_views(trained, tmp_path):
    model, refined, _, (u_test, _) = trained
    delta = refined.delta_dict
    assert delta["spectral.0.weight"].dtype == torch.complex128
    torch.testing.assert_close(flatten_params(delta), refined.delta)
    net = refined.to_network()
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), refined.theta0[k] + delta[k])
    out, dout = module_jvp(model, u_test[:5], delta)
    torch.testing.assert_close(refined(u_test[:5]), out + dout)
    path = tmp_path / "fourier.pt"
    refined.save(path)
    loaded = ls.RefinedModel.load(path, FourierNet(width=8, modes=6, layers=2, seed=5))
    assert loaded.theta0["spectral.1.weight"].dtype == torch.complex128
    torch.testing.assert_close(loaded(u_test[:5]), refined(u_test[:5]))


def test_residual_fn_refinement_saves_and_loads(small, tmp_path):
    model, u, y = small

    def residual(p):
        return tfunc.functional_call(model, p, (u,)) - y

    refined = ls.refine(
        model,
        residual_fn=residual,
        method=ls.Subspace(rank=5),
        generator=torch.Generator().manual_seed(0),
    )
    assert refined.delta_dict["spectral.0.weight"].dtype == torch.complex128
    refined.save(tmp_path / "r.pt")
    loaded = ls.RefinedModel.load(tmp_path / "r.pt", model)  # the theta0 hash matches
    torch.testing.assert_close(loaded(u), refined(u))
    other = FourierNet(width=3, modes=3, layers=1, seed=9)
    with pytest.raises(ValueError, match="other parameter values"):
        ls.RefinedModel.load(tmp_path / "r.pt", other)


@pytest.mark.slow
def test_guide_example_runs(capsys):
    """The guide's worked example (the same model, data and seeds as ``trained``) prints the
    errors its comment shows, at least a 2x reduction."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = guide.split("## Fourier layers and complex parameters", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "guide-fourier-example", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.strip()
    assert printed == re.search(r"# (test error .*)", code).group(1)
    before, after = map(float, re.search(r"([\d.]+) -> ([\d.]+)", printed).groups())
    assert after < before / 2


# ---------------------------------------------------------------------- neuraloperator
def test_neuraloperator_fno():
    pytest.importorskip("neuralop")
    from neuralop.models import FNO

    torch.manual_seed(0)
    fno = FNO(n_modes=(6,), hidden_channels=8, in_channels=1, out_channels=1, n_layers=2)
    fno = fno.eval()
    if not any(p.is_complex() for p in fno.parameters()):
        pytest.skip("this neuralop version stores no complex parameters")
    g = torch.Generator().manual_seed(0)
    u, y = smoothing_data(16, 32, g, dtype=F32)
    u, y = u[:, None], y[:, None]
    J = JacobianOperator.from_module(fno, u, y)
    assert J.batching == "loop" and J.dtype == F32
    assert dottest(J, generator=torch.Generator().manual_seed(1), rtol=1e-4)
    refined = ls.refine(fno, data=(u, y), method=ls.Subspace(rank=20), generator=g)
    assert refined.info["loss_linearized"] < refined.info["loss_before"]
