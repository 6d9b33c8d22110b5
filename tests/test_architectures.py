"""LSR is architecture-agnostic: a conv net and a transformer block refine like an MLP."""

from __future__ import annotations

import torch
from torch import nn

import lsr_scale as ls


def _rel(pred, y):
    return float((pred - y).detach().norm() / y.norm())


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 1)

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return self.head(h.flatten(1))


class Block(nn.Module):
    """Pre-norm transformer block with explicit softmax attention (torch's fused CPU
    attention kernel has no double backward, which the JVP fallback needs)."""

    def __init__(self, d=8, heads=2, ff=16):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        split = lambda t: t.reshape(n, length, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, length, d))
        return x + self.ff(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Linear(1, d)
        self.block = Block(d)
        self.head = nn.Linear(d, 1)

    def forward(self, x):  # (N, L, 1) -> (N, 1)
        return self.head(self.block(self.embed(x)).mean(1))


def _fit(net, x, y, steps=150):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()


def test_conv_net_refines(generator):
    torch.manual_seed(0)
    x = torch.randn(120, 1, 6, 6, generator=generator, dtype=torch.float64)
    y = torch.sin(x.mean(dim=(1, 2, 3)) * 3)[:, None] + 0.1 * x[:, 0, 0, :1]
    net = SmallConv().double()
    _fit(net, x, y)
    base = _rel(net(x), y)
    refined = ls.refine(net, data=(x, y), rank=100, generator=generator)
    assert _rel(refined(x), y) < 0.5 * base
    for p in net.parameters():
        assert p.requires_grad  # untouched


def test_transformer_block_refines(generator):
    torch.manual_seed(0)
    x = torch.randn(100, 5, 1, generator=generator, dtype=torch.float64)
    y = torch.tanh(x.sum(1)) + x[:, 0] * x[:, 1]
    net = TinyTransformer().double().eval()
    _fit(net, x, y)
    base = _rel(net(x), y)
    refined = ls.refine(net, data=(x, y), rank=80, generator=generator)
    assert _rel(refined(x), y) < 0.5 * base
    krylov = ls.refine(net, data=(x, y), method="krylov", maxiter=100, generator=generator)
    assert _rel(krylov(x), y) < base
