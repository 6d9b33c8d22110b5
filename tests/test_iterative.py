"""Iterative LSR on a tiny Poisson PINN."""

from __future__ import annotations

import copy

import pytest
import torch

import lsr_scale as ls
from lsr_scale.problems._poisson import PoissonProblem
from lsr_scale.refine._iterative import iterative_refine


@pytest.fixture(scope="module")
def trained():
    prob = PoissonProblem(
        n_interior=300, n_boundary=80, widths=(2, 16, 16, 1), grid=21, dtype=torch.float64
    )
    net = prob.make_model()
    prob.train(net, epochs=300, lr=3e-3, progress=False)
    return prob, net


@pytest.mark.parametrize("align", ["lbfgs", "adam"])
def test_iterative_refine_improves_and_leaves_model_alone(trained, align):
    prob, net = trained
    before = copy.deepcopy(net.state_dict())
    base = prob.test_error(net)
    res = iterative_refine(
        net,
        blocks=prob.blocks,
        sample_points=prob.sample_points,
        collocation=lambda pts: pts[0],
        weights={"bc": prob.bc_weight},
        outer_iters=2,
        method=ls.Subspace(rank=80),
        subspace_points=100,
        align=align,
        align_iters=60 if align == "lbfgs" else 100,
        evaluate=prob.test_error,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    h = res.history
    assert [e["outer"] for e in h] == [0, 1, 2]
    assert h[0]["rel_l2"] == pytest.approx(base)
    assert all(h[i]["wall_s"] <= h[i + 1]["wall_s"] for i in range(2))
    if align == "lbfgs":
        assert h[-1]["lsr_rel_l2"] < base
        assert h[-1]["rel_l2"] < base
    assert all(e["rel_l2"] == e["rel_l2"] for e in h)  # finite, no NaN
    assert prob.test_error(res.network) == pytest.approx(h[-1]["rel_l2"])
    assert res.refined.info["rank"] == 80


def test_iterative_refine_time_budget_and_checks(trained):
    prob, net = trained
    res = iterative_refine(
        net,
        blocks=prob.blocks,
        sample_points=prob.sample_points,
        collocation=lambda pts: pts[0],
        outer_iters=5,
        method=ls.Subspace(rank=20),
        subspace_points=20,
        align_iters=5,
        time_budget=0.0,
        progress=False,
    )
    assert len(res.history) == 2  # stops after the first outer iteration
    kw = dict(blocks=prob.blocks, sample_points=prob.sample_points, collocation=lambda pts: pts[0])
    with pytest.raises(ValueError, match="align"):
        iterative_refine(net, align="sgd", **kw)
    with pytest.raises(ValueError, match="dtau"):
        iterative_refine(net, dtau=0.0, **kw)
