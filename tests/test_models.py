"""lsr_scale.models: DeepONet and ModifiedMLP shapes, conventions and checks."""

from __future__ import annotations

import pytest
import torch

from lsr_scale.models._deeponet import DeepONet
from lsr_scale.models._modified_mlp import ModifiedMLP


def test_deeponet_aligned_broadcast_and_grid_agree(generator):
    torch.manual_seed(0)
    net = DeepONet([5, 16, 16], [2, 16, 16])
    u = torch.randn(3, 5, generator=generator)
    y = torch.rand(4, 2, generator=generator)
    grid = net.grid(u, y)
    assert grid.shape == (3, 4)
    # aligned rows: every (function, point) pair
    uu = u.repeat_interleave(4, 0)
    yy = y.repeat(3, 1)
    out = net(uu, yy)
    assert out.shape == (12, 1)
    torch.testing.assert_close(out.reshape(3, 4), grid)
    # a single function broadcast against all points
    torch.testing.assert_close(net(u[1:2], y)[:, 0], grid[1])


def test_deeponet_bias_and_parameter_count():
    net = DeepONet([128, 128, 128, 128, 128], [1, 128, 128, 128, 128])
    n = sum(p.numel() for p in net.parameters())
    assert n == (128 * 128 + 128) * 4 + (128 + 128) + (128 * 128 + 128) * 3 + 1
    assert net.bias.shape == ()


def test_deeponet_checks_inputs():
    with pytest.raises(ValueError, match="latent"):
        DeepONet([3, 8], [1, 4])
    with pytest.raises(ValueError, match="activation"):
        DeepONet([3, 8], [1, 8], activation="nope")
    net = DeepONet([3, 8], [1, 8])
    with pytest.raises(ValueError, match="aligned"):
        net(torch.zeros(2, 3), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="2-D"):
        net(torch.zeros(3), torch.zeros(5, 1))


def test_modified_mlp_matches_its_definition(generator):
    torch.manual_seed(0)
    net = ModifiedMLP([3, 8, 8, 8, 2]).double()
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    u = torch.tanh(net.encoder_u(x))
    v = torch.tanh(net.encoder_v(x))
    h = x
    for layer in net.hidden:
        z = torch.tanh(layer(h))
        h = (1 - z) * u + z * v
    torch.testing.assert_close(net(x), net.out(h))
    assert net(x).shape == (5, 2)
    with pytest.raises(ValueError, match="equal hidden"):
        ModifiedMLP([3, 8, 4, 1])


def test_modified_deeponet_runs():
    net = DeepONet([6, 10, 10, 10], [1, 10, 10, 10], arch="modified")
    assert net(torch.zeros(4, 6), torch.zeros(4, 1)).shape == (4, 1)


def test_multionet_matches_its_definition(generator):
    """(1/L) sum over the last L layers of w_l <b_l(u), t_l(y)> + b0, written out by hand;
    aligned rows, broadcast rows and the grid agree."""
    from lsr_scale.models import MultiONet

    torch.manual_seed(0)
    net = MultiONet([5, 6, 7, 7], [2, 6, 7, 7], sum_layers=2).double()
    with torch.no_grad():
        net.weights.copy_(torch.tensor([0.7, -1.3]))
        net.bias.fill_(0.25)
    u = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(3, 2, generator=generator, dtype=torch.float64)

    def feats(layers, x):
        out = []
        for lin in layers:
            x = torch.tanh(lin(x))
            out.append(x)
        return out[-2:]

    b, t = feats(net.branch, u), feats(net.trunk, y)
    want = (0.7 * b[0] @ t[0].T - 1.3 * b[1] @ t[1].T) / 2 + 0.25
    torch.testing.assert_close(net.grid(u, y), want)
    aligned = net(u.repeat_interleave(3, 0), y.repeat(4, 1)).reshape(4, 3)
    torch.testing.assert_close(aligned, want)
    torch.testing.assert_close(net(u[:1], y)[:, 0], want[0])
    assert sum(p.numel() for p in net.parameters()) == (
        (5 * 6 + 6) + (6 * 7 + 7) + (7 * 7 + 7) + (2 * 6 + 6) + (6 * 7 + 7) + (7 * 7 + 7) + 2 + 1
    )


def test_multionet_starts_at_zero_and_checks_widths():
    from lsr_scale.models import MultiONet

    net = MultiONet([3, 4, 4], [1, 4, 4], sum_layers=1)
    assert torch.equal(net.grid(torch.randn(2, 3), torch.rand(5, 1)), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same number of layers"):
        MultiONet([3, 4, 4], [1, 4])
    with pytest.raises(ValueError, match="sum_layers"):
        MultiONet([3, 4, 4], [1, 4, 4], sum_layers=2)
    with pytest.raises(ValueError, match="layer 2 is summed"):
        MultiONet([3, 4, 5], [1, 4, 6], sum_layers=1)
    with pytest.raises(ValueError, match="2-D"):
        net(torch.randn(3), torch.rand(3, 1))


def test_multionet_products_match_dense_jacobian(generator):
    """The library's JVP/VJP products of a MultiONet grid view against jacrev in float64."""
    from torch.func import functional_call, jacrev

    import lsr_scale as ls
    from lsr_scale.models import MultiONet
    from lsr_scale.problems._burgers import DeepONetGrid

    torch.manual_seed(1)
    net = MultiONet([6, 8, 8, 8], [1, 8, 8, 8], sum_layers=2).double()
    with torch.no_grad():
        net.weights.normal_()
    y = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    view = DeepONetGrid(net, y=y)
    u = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    J = ls.JacobianOperator.from_module(view, (u,), None)
    params = {k: v.detach() for k, v in view.named_parameters()}
    jac = jacrev(lambda p: functional_call(view, p, (u,)).reshape(-1))(params)
    dense = torch.cat([jac[k].reshape(20, -1) for k in params], 1)
    v = torch.randn(dense.shape[1], generator=generator, dtype=torch.float64)
    w = torch.randn(20, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(J.matvec(v), dense @ v)
    torch.testing.assert_close(J.rmatvec(w), dense.T @ w)
