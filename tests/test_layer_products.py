"""Jacobian products of the standard torch.nn layers, against dense references.

Every case is a small model built from one family of layers. Each is checked three ways:

* the operator's dense Jacobian (default back end: a cached linearization) against
  ``torch.func.jacrev`` in float64;
* the construction self-check passes in float32 without changing the back end;
* ``lsr_scale.testing.dottest`` in float32.

The cases cover what broke before: recurrent layers (GRU: ``torch.func.linearize`` drifted
after its first call), a slice write into a new tensor (FNO-style: wrong from the first
call), and attention (no forward-mode rule in the fused kernels).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, jvp

import lsr_scale as ls
from lsr_scale.operators._linearize import linearize
from lsr_scale.testing import dottest

N = 6  # data rows


class Head(nn.Module):
    """``body`` then a linear read-out of the last position (sequence models)."""

    def __init__(self, body, width, pick=lambda out: out[0][:, -1]):
        super().__init__()
        self.body, self.out, self.pick = body, nn.Linear(width, 2), pick

    def forward(self, x):
        return self.out(self.pick(self.body(x)))


class Attention(nn.Module):
    def __init__(self, causal=False):
        super().__init__()
        self.qkv, self.out, self.causal = nn.Linear(4, 12), nn.Linear(4, 1), causal

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)).mean(1)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha, self.out = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.mha(x, x, x, need_weights=False)[0]).mean(1)


class Encoder(nn.Module):
    def __init__(self, decoder=False):
        super().__init__()
        make = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
        self.layer = make(8, 2, 16, dropout=0.0, batch_first=True)
        self.out, self.decoder = nn.Linear(8, 1), decoder

    def forward(self, x):
        h = self.layer(x, x) if self.decoder else self.layer(x)
        return self.out(h).mean(1)


class Tokens(nn.Module):
    """Token ids into an embedding (integer inputs)."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(11, 4), nn.Linear(4, 1)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids))).mean(1)


class SliceWrite(nn.Module):
    """A spectral-style layer: the kept modes written into a slice of a zeros tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        z = torch.zeros(x.shape[0], 8, dtype=x.dtype)
        z[:, :4] = self.lin(x)
        return torch.cos(z)


class InPlace(nn.Module):
    """In-place activations on intermediates (as inside recurrent cells)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = 2 * self.a(x)
        h.add_(torch.tanh(x))
        h.sigmoid_()
        return self.b(h).exp_()


def _conv(mode):
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1, padding_mode=mode), nn.Tanh(), nn.Flatten(), nn.Linear(24, 2)
    )


CASES = {
    "rnn": (lambda: Head(nn.RNN(3, 5, batch_first=True), 5), (N, 4, 3)),
    "lstm": (lambda: Head(nn.LSTM(3, 5, batch_first=True), 5), (N, 4, 3)),
    "gru": (lambda: Head(nn.GRU(3, 5, batch_first=True), 5), (N, 4, 3)),
    "gru-2layer": (lambda: Head(nn.GRU(3, 4, num_layers=2, batch_first=True), 4), (N, 4, 3)),
    "sdpa": (lambda: Attention(), (N, 5, 4)),
    "sdpa-causal": (lambda: Attention(causal=True), (N, 5, 4)),
    "multihead": (MHA, (N, 5, 8)),
    "encoder-layer": (lambda: Encoder(), (N, 5, 8)),
    "decoder-layer": (lambda: Encoder(decoder=True), (N, 5, 8)),
    "conv-zeros": (lambda: _conv("zeros"), (N, 2, 8)),
    "conv-reflect": (lambda: _conv("reflect"), (N, 2, 8)),
    "conv-replicate": (lambda: _conv("replicate"), (N, 2, 8)),
    "conv-circular": (lambda: _conv("circular"), (N, 2, 8)),
    "conv2d-transpose": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(2, 1, 2, stride=2),
            nn.Flatten(),
        ),
        (N, 1, 4, 4),
    ),
    "batchnorm-eval": (
        lambda: nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1)),
        (N, 3),
    ),
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 1)),
        (N, 3),
    ),
    "groupnorm": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(), nn.Linear(24, 1)
        ),
        (N, 2, 8),
    ),
    "instancenorm": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.InstanceNorm1d(4, affine=True), nn.Flatten(), nn.Linear(24, 1)
        ),
        (N, 2, 8),
    ),
    "embedding": (Tokens, "ids"),
    "slice-write": (SliceWrite, (N, 8)),
    "in-place": (InPlace, (N, 8)),
}


# Cases that do not run through the cached linearization, and why: the CPU LSTM kernel
# (mkldnn_rnn_layer) has no forward-mode rule, so jvp="auto" takes the double-VJP back end;
# circular padding writes through views into a tensor built from the input, which the
# linearization refuses (fresh torch.func.jvp products instead). Every other case, batch
# norm included, must keep the linearization.
NOT_LINEARIZED = {"lstm", "conv-circular"}


def _build(name, dtype):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make().to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    if shape == "ids":
        x = torch.randint(0, 11, (N, 5), generator=g)
    else:
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        y = torch.zeros_like(model(x))
    return model, x, y


@pytest.mark.parametrize("name", list(CASES))
def test_products_match_dense_jacobian(name):
    model, x, y = _build(name, torch.float64)
    J = ls.JacobianOperator.from_module(model, x, y)
    assert J.product_check["fallback"] is None, J.product_check
    params = {k: v.detach() for k, v in model.named_parameters()}

    def residual(p):
        return functional_call(model, p, (x,)).reshape(-1)

    from lsr_scale.operators._attention import differentiable_attention

    with differentiable_attention():
        dense = jacrev(residual)(params)
    ref = torch.cat([dense[k].reshape(J.shape[0], -1) for k in params], dim=1)
    torch.testing.assert_close(J.to_dense(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_products_pass_the_dot_test_in_float32(name):
    model, x, y = _build(name, torch.float32)
    J = ls.JacobianOperator.from_module(model, x, y)
    check = J.product_check
    assert check["fallback"] is None and check["dot_test"] <= check["tolerance"], check
    assert J.uses_linearize == (name not in NOT_LINEARIZED), J.linearize_error
    if J.uses_linearize:
        assert check["linearize_error"] <= check["tolerance"], check
    assert dottest(J, generator=torch.Generator().manual_seed(2), rtol=1e-5)


@pytest.mark.parametrize("name", ["gru", "slice-write", "in-place"])
def test_linearization_is_the_fresh_jvp_on_every_call(name):
    """torch.func.linearize (torch 2.13) is wrong on these: drifting after the first call
    (gru, in-place) or wrong from the first (slice-write); ours matches on every call."""
    model, x, _ = _build(name, torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p):
        return functional_call(model, p, (x,))

    lin = linearize(f, params)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        t = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        ref = jvp(f, (params,), (t,))[1]
        torch.testing.assert_close(lin(t), ref, rtol=1e-12, atol=1e-12)


def test_attention_settings_are_restored_after_an_error():
    fast = torch.backends.mha.get_fastpath_enabled()
    model, x, y = _build("encoder-layer", torch.float32)
    with pytest.raises(ValueError, match="targets"):
        ls.JacobianOperator.from_module(model, x, y[:, :0])
    assert torch.backends.mha.get_fastpath_enabled() is fast


def test_transformer_refines_with_both_default_methods():
    model, x, _ = _build("encoder-layer", torch.float32)
    y = torch.sin(x.sum((1, 2)))[:, None]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("subspace", "krylov"):
        refined = ls.refine(model, data=(x, y), method=method)
        assert refined.info["loss_linearized"] < refined.info["loss_before"]
        err0 = (model(x) - y).norm()
        assert (refined(x) - y).norm() < err0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_token_ids_refine_with_both_default_methods():
    model, ids, _ = _build("embedding", torch.float32)
    y = torch.randn(N, 1, generator=torch.Generator().manual_seed(3))
    for method in ("subspace", "krylov"):
        refined = ls.refine(model, data=(ids, y), method=method)
        assert refined.info["loss_linearized"] < refined.info["loss_before"]
        assert refined(ids).shape == y.shape


# ---------------------------------------------------------------- the self-check itself


def test_self_check_drops_a_wrong_linearization(monkeypatch):
    """A linearization off by 1% is detected, dropped for fresh JVPs, warned and recorded."""
    import lsr_scale.operators._forward as fwd

    real = fwd.linearize

    def off(fn, params):
        good = real(fn, params)
        return lambda t: 1.01 * good(t)

    monkeypatch.setattr(fwd, "linearize", off)
    model, x, y = _build("layernorm", torch.float32)
    with pytest.warns(RuntimeWarning, match="model Sequential: the product self-check"):
        J = ls.JacobianOperator.from_module(model, x, y)
    assert not J.uses_linearize
    assert J.product_check["linearize_error"] > 5e-3
    assert "fresh torch.func.jvp" in J.product_check["fallback"]
    assert J.product_check["dot_test"] <= J.product_check["tolerance"]
    monkeypatch.setattr(fwd, "linearize", real)
    ref = ls.JacobianOperator.from_module(model, x, y)
    torch.testing.assert_close(J.to_dense(), ref.to_dense())


class _WrongJVP(torch.autograd.Function):
    """``2 x`` whose forward-mode rule says ``3 t``: JVP and VJP disagree."""

    @staticmethod
    def forward(x):
        return 2 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 2 * g

    @staticmethod
    def jvp(ctx, t):
        return 3 * t


class _Wrong(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return _WrongJVP.apply(self.lin(x))


def test_self_check_moves_to_double_vjp_when_the_transpose_is_wrong():
    torch.manual_seed(0)
    model = _Wrong()
    x = torch.randn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        J = ls.JacobianOperator.from_module(model, x, torch.zeros(5, 2))
    assert J.jvp_mode == "double_vjp"
    assert "double-VJP" in J.product_check["fallback"]
    assert "dot test" in J.jvp_fallback_reason
    # the double-VJP products are those of the backward rule: 2 * d(lin)
    params = {k: v.detach() for k, v in model.named_parameters()}
    dense = jacrev(lambda p: 2 * functional_call(model.lin, p, (x,)).reshape(-1))(
        {k[4:]: v for k, v in params.items()}
    )
    ref = torch.cat([dense[k].reshape(10, -1) for k in ("weight", "bias")], dim=1)
    torch.testing.assert_close(J.to_dense(), ref)


def test_self_check_off_takes_the_products_as_they_are():
    torch.manual_seed(0)
    J = ls.JacobianOperator.from_module(
        _Wrong(), torch.randn(5, 3), torch.zeros(5, 2), self_check=False
    )
    assert J.product_check is None and J.jvp_mode == "forward"


def test_refine_records_the_product_check():
    model, x, y = _build("gru", torch.float32)
    refined = ls.refine(model, data=(x, y), method=ls.Subspace(rank=4))
    check = refined.info["product_check"]
    assert check["fallback"] is None and check["backend"] == "forward (linearized)"
    off = ls.refine(
        model, data=(x, y), method=ls.Subspace(rank=4), products=ls.Products(self_check=False)
    )
    assert off.info["product_check"] is None


class _NoDerivative(torch.autograd.Function):
    """An operation with neither a forward-mode rule nor a working backward."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("derivative for aten::my_fused_op is not implemented")


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return _NoDerivative.apply(self.lin(x))


def test_undifferentiable_layer_is_named_with_the_entry_point_and_the_fix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), _Block(), nn.Linear(2, 1))
    x, y = torch.randn(5, 2), torch.randn(5, 1)
    with pytest.raises(RuntimeError) as info:
        ls.refine(model, data=(x, y))
    msg = str(info.value)
    assert msg.startswith("data= (model(*inputs) - targets): expected")
    assert "in layer 1 (_Block)" in msg and "aten::my_fused_op" in msg and "Fix:" in msg
    with pytest.raises(RuntimeError, match=r"^residual_fn: expected"):
        ls.refine(model, residual_fn=lambda p: functional_call(model, p, (x,)) - y)
