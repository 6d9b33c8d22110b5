"""pytest-benchmark suite: the per-product costs that LSR's run time is made of.

Run with ``python -m pytest bench/test_bench_products.py --benchmark-only`` (add
``--benchmark-json=bench/results/products_<device>.json`` to keep a record). Not collected by
the default test run. Compare within one run: the LSMR iteration against JVP + VJP, the
preconditioned against the plain iteration.
"""

from __future__ import annotations

import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.models import MLP

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(
    scope="module", params=[(2, 64, 64, 64, 1), (2, 160, 160, 160, 160, 1)], ids=["m9k", "m78k"]
)
def operator(request):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MLP(request.param).to(DEVICE)
    x = (torch.rand(2000, 2, generator=g) * 2 - 1).to(DEVICE)
    y = torch.sin(3 * x[:, :1])
    J = ls.JacobianOperator.from_module(model, x, y)
    v = torch.randn(J.shape[1], generator=g).to(DEVICE)
    u = torch.randn(J.shape[0], generator=g).to(DEVICE)
    return J, v, u


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def test_jvp(benchmark, operator):
    J, v, _ = operator
    benchmark(lambda: (J.matvec(v), _sync()))


def test_vjp(benchmark, operator):
    J, _, u = operator
    benchmark(lambda: (J.rmatvec(u), _sync()))


def test_lsmr_10_iterations(benchmark, operator):
    J, _, _ = operator
    b = -J.residual
    res = benchmark(lambda: ls.lsmr(J, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=10))
    assert res.itn == 10


def test_nystrom_apply(benchmark, operator):
    J, v, _ = operator
    M = ls.precond.NystromPreconditioner(J, 50, generator=torch.Generator().manual_seed(0))
    benchmark(lambda: (M.matvec(v), _sync()))
