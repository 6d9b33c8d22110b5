"""The memory-bounded subspace route (lsr_scale/refine/_streaming.py) against the dense one."""

from __future__ import annotations

import pytest
import torch

import lsr_scale as ls
from lsr_scale.refine._streaming import (
    ColumnMask,
    draw_mask,
    incremental_qr_reduced,
    reduced_gram,
    solve_gram_eigh,
    solve_nested,
    streamed_basis,
)
from lsr_scale.refine._subspace import solve_reduced


def _problem(seed=0, n=600):
    """A small regression whose Jacobian spectrum decays gently (sigma_60 / sigma_1 ~ 1e-4)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 24), torch.nn.Tanh(), torch.nn.Linear(24, 1)
    ).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    return net, x, y


def _jac(net, x, y, chunk=150):
    return ls.JacobianOperator.from_module(net, (x,), y, chunk_size=chunk)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("k", [10, 40])
def test_streamed_route_matches_dense_rsvd_without_oversampling(k):
    net, x, y = _problem()
    J = _jac(net, x, y)
    b = -J.residual
    _, S, Vh = ls.randomized_svd(J, k, oversample=0, generator=torch.Generator().manual_seed(3))
    P = Vh.T / S
    d_dense = P @ solve_reduced(J.matmat(P), b)
    Ps, info = streamed_basis(J, k, generator=torch.Generator().manual_seed(3))
    assert info["rank"] == k
    # same subspace as the dense randomized SVD (same generator, same test vectors)
    assert float(torch.linalg.svdvals(Vh @ Ps).min()) > 1 - 1e-8
    C, r, bb = reduced_gram(J, Ps, b)
    coefs, sinfo = solve_nested(C, r, bb, [k // 2, k])
    d = Ps @ coefs[k]
    assert _rel(d, d_dense) < 1e-7
    # the nested Cholesky's training loss is the true linearized loss, at every rank
    for j in (k // 2, k):
        dj = Ps[:, :j] @ coefs[j]
        true = float((J.matvec(dj) - b).square().sum())
        assert abs(float(sinfo["train_loss"][j - 1]) - true) <= 1e-8 * bb
    # the alternatives measured against it
    assert _rel(Ps @ solve_gram_eigh(C, r, n=J.shape[0]), d_dense) < 1e-7
    assert _rel(Ps @ incremental_qr_reduced(J, Ps, b), d_dense) < 1e-7


def test_streamed_reduced_with_the_dense_basis_and_float32_storage():
    net, x, y = _problem(1)
    J = _jac(net, x, y)
    b = -J.residual
    _, S, Vh = ls.randomized_svd(J, 30, generator=torch.Generator().manual_seed(0))
    P = Vh.T / S
    d_dense = P @ solve_reduced(J.matmat(P), b)
    C, r, bb = reduced_gram(J, P, b)
    assert _rel(P @ solve_nested(C, r, bb, [30])[0][30], d_dense) < 1e-8
    Ps, _ = streamed_basis(J, 30, generator=torch.Generator().manual_seed(0))
    P32, _ = streamed_basis(
        J, 30, generator=torch.Generator().manual_seed(0), basis_dtype=torch.float32
    )
    assert P32.dtype == torch.float32
    d64 = Ps @ solve_nested(*reduced_gram(J, Ps, b), [30])[0][30]
    d32 = P32.double() @ solve_nested(*reduced_gram(J, P32, b), [30])[0][30]
    assert _rel(d32, d64) < 1e-4


def test_subspace_method_streamed_matches_dense_through_refine():
    net, x, y = _problem(2)
    dense = ls.refine(
        net,
        data=((x,), y),
        method=ls.Subspace(rank=25, oversample=0),
        generator=torch.Generator().manual_seed(5),
    )
    streamed = ls.refine(
        net,
        data=((x,), y),
        method=ls.Subspace(rank=25, oversample=0, range_finder="streamed"),
        products=ls.Products(chunk_size=100),
        generator=torch.Generator().manual_seed(5),
    )
    assert _rel(streamed.delta, dense.delta) < 1e-7
    assert streamed.info["reduced_solver"] == "streamed"
    assert len(streamed.info["train_loss_by_rank"]) == 25


def test_fraction_mask_exact_count_only_masked_entries_change_and_reproducible():
    net, x, y = _problem(3)
    m = sum(p.numel() for p in net.parameters())
    idx = draw_mask(m, 0.5, torch.Generator().manual_seed(7))
    assert idx.numel() == round(0.5 * m) and idx.unique().numel() == idx.numel()
    assert torch.equal(idx, draw_mask(m, 0.5, torch.Generator().manual_seed(7)))
    J = _jac(net, x, y)
    Jm = ColumnMask(J, idx)
    v = torch.randn(idx.numel(), dtype=torch.float64)
    full = torch.zeros(m, dtype=torch.float64)
    full[idx] = v
    assert torch.allclose(Jm.matvec(v), J.matvec(full))
    u = torch.randn(J.shape[0], dtype=torch.float64)
    assert torch.allclose(Jm.rmatvec(u), J.rmatvec(u)[idx])
    for rf in ("dense", "streamed"):
        kw = dict(rank=20, oversample=0, fraction=0.5)
        if rf == "streamed":
            kw["range_finder"] = "streamed"
        runs = [
            ls.refine(
                net,
                data=((x,), y),
                method=ls.Subspace(**kw),
                generator=torch.Generator().manual_seed(7),
            )
            for _ in range(2)
        ]
        d = runs[0].delta
        assert torch.equal(d, runs[1].delta)
        changed = torch.nonzero(d).flatten()
        assert set(changed.tolist()) <= set(idx.tolist())
        assert runs[0].info["refined_entries"] == idx.numel()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(range_finder="fast"), "Subspace.range_finder: expected"),
        (dict(range_finder="streamed"), "Subspace.oversample: range_finder='streamed'"),
        (dict(range_finder="streamed", oversample=0, power_iters=1), "Subspace.power_iters"),
        (dict(range_finder="streamed", oversample=0, reduced="lsmr"), "Subspace.reduced"),
        (dict(reduced="streamed", rank="auto"), "Subspace.rank: the streamed route"),
        (dict(reduced="streamed", rcond=1e-6), "Subspace.rcond"),
        (dict(reduced="streamed", subspace="output"), "Subspace.subspace"),
        (dict(fraction=0.0), "Subspace.fraction: expected a float in"),
        (dict(fraction=1.5), "Subspace.fraction: expected a float in"),
        (dict(basis_dtype=torch.float32), "Subspace.basis_dtype: applies to"),
    ],
)
def test_validation_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        ls.Subspace(**kw)


def test_basis_dtype_type_error():
    with pytest.raises(TypeError, match="Subspace.basis_dtype: expected a real torch dtype"):
        ls.Subspace(range_finder="streamed", oversample=0, basis_dtype="float32")


def test_defaults_unchanged():
    s = ls.Subspace()
    assert (s.range_finder, s.basis_dtype, s.fraction, s.reduced) == ("dense", None, None, "auto")
