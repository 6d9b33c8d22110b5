"""The memory model (lsr_scale.refine._memory) against measured peaks.

What refine does with it (the plan, the budget, the adaptations) is in tests/test_plan.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import lsr_scale as ls
from lsr_scale.refine._memory import (
    activation_bytes_per_row,
    available_bytes,
    choose_block,
    estimate,
)

# One measurement per fresh process: refine on a float64 tanh MLP 2-W-W-1 with random
# targets, the peak it added (PeakMemory) beside the model's estimate.
_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    torch.set_num_threads(1)
    import lsr_scale as ls
    from lsr_scale._utils import PeakMemory
    from lsr_scale.refine._memory import activation_bytes_per_row, estimate
    W, rows, method = json.loads(sys.argv[1]), json.loads(sys.argv[2]), eval(sys.argv[3])
    torch.manual_seed(0)
    L = torch.nn.Linear
    net = torch.nn.Sequential(L(2, W), torch.nn.Tanh(), L(W, W), torch.nn.Tanh(), L(W, 1))
    net = net.double()
    x = torch.rand(rows, 2, dtype=torch.float64)
    y = torch.randn(rows, 1, dtype=torch.float64)
    m = sum(p.numel() for p in net.parameters())
    est = estimate(method, m=m, n=rows, act_row=activation_bytes_per_row(net, (x,)),
                   dtype=torch.float64)
    warnings.simplefilter("ignore")
    with PeakMemory() as pm:
        ls.refine(net, data=(x, y), method=method, generator=torch.Generator().manual_seed(0))
    print(json.dumps({"measured": pm.increment_bytes, "estimate": est.total,
                      "kind": pm.kind, "parts": est.parts}))
    """
)

CASES = {
    "krylov-parameter": (400, 500, "ls.Krylov(maxiter=5, preconditioner='nystrom')"),
    "krylov-sample": (400, 500, "ls.Krylov(maxiter=5, space='sample')"),
    "subspace-dense": (400, 500, "ls.Subspace(rank=120)"),
    "cache": (64, 40_000, "ls.Krylov(maxiter=3, preconditioner=None)"),
}  # fmt: skip


def _measure(W, rows, method):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(W), json.dumps(rows), method],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_within_2x_of_measured_peak(case):
    res = _measure(*CASES[case])
    if res["kind"] != "cpu_peak_rss":
        pytest.skip("the peak resident set size cannot be reset here (/proc/self/clear_refs)")
    ratio = res["measured"] / res["estimate"]
    assert 0.5 <= ratio <= 2.0, (case, ratio, res)


def test_activation_bytes_from_one_small_forward():
    net = torch.nn.Sequential(torch.nn.Linear(2, 100), torch.nn.Tanh(), torch.nn.Linear(100, 1))
    x = torch.rand(50, 2)
    a = activation_bytes_per_row(net, (x,))
    # what autograd saves: the input, tanh's output, the output: ~ (2 + 100 + 1) floats
    assert 100 * 4 <= a <= 450 * 4
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_estimate_parts_and_scaling():
    kw = dict(m=10**6, n=1000, act_row=8e3, dtype=torch.float32, product_dtype=torch.float64)
    dense = ls.precond.Nystrom(rank=300, basis_dtype=torch.float64)
    big = estimate(ls.Krylov(preconditioner=dense), **kw)
    default = estimate(ls.Krylov(), **kw)
    small = estimate(ls.Krylov(maxiter=10), **kw)
    # the dense float64 build holds A^T Q and its SVD factor: two m x 310 float64 blocks
    assert big.parts["build"] >= 2 * 10**6 * 310 * 8
    # the default stores the basis in the model's float32, built streamed: one m x 310 block
    assert default.parts["basis"] == 10**6 * 310 * 4 and default.total < big.total / 2
    # capped at maxiter=10 the rank is 10
    assert small.total < 1e9 < big.total
    est2 = estimate(ls.Krylov(maxiter=10), **{**kw, "m": 10**7})
    assert 5 < est2.total / small.total < 12  # linear in m
    assert "GB" in big.describe()
    with pytest.raises(TypeError, match="expected ls.Subspace or ls.Krylov"):
        estimate(object(), **kw)


def test_available_bytes_and_block_choice():
    assert available_bytes("cpu") > 0
    assert choose_block(10**6, torch.float64, "cpu", free=10**12) == 4  # 64 MiB cap
    assert choose_block(10**6, torch.float64, "cpu", free=8 * 10**6) == 1
    assert choose_block(100, torch.float64, "cpu", limit=64, free=10**12) == 64


def test_refine_records_the_estimate():
    net = torch.nn.Sequential(torch.nn.Linear(2, 20), torch.nn.Tanh(), torch.nn.Linear(20, 1))
    net = net.double()
    x = torch.rand(60, 2, dtype=torch.float64)
    r = ls.refine(net, data=(x, x[:, :1] ** 2), method=ls.Krylov(maxiter=5),
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert r.info["memory_estimate"]["cache"] > 0
    assert r.info["settings"].precond_rank((60, 501), ls.precond.Nystrom()) == 5
