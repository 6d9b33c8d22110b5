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
