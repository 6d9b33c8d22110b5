"""Iterative LSR for composite physics-informed losses (Cao & Zhang 2026; see docs/design.md)."""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from .._utils import progress as _progress
from ..pde import stack_residuals
from ._methods import Method, Products
from ._refine import as_method, refine
from ._subspace import Subspace

__all__ = ["iterative_refine", "IterativeResult", "lbfgs_fit"]


@dataclass
class IterativeResult:
    """What :func:`iterative_refine` returns.

    Attributes
    ----------
    network : nn.Module
        The aligned network after the last outer iteration (a copy; the input model is
        never touched).
    refined : RefinedModel
        The last one-shot LSR linear predictor (around the network *before* the last
        alignment).
    history : list of dict
        One entry per outer iteration (plus entry 0 for the starting network): ``outer``,
        ``wall_s`` (cumulative, evaluation excluded), ``lsr_s``, ``align_s``, ``loss``
        (alignment loss at the end), ``residual`` (physics loss of the aligned network) and,
        with ``evaluate``, ``rel_l2`` (aligned network) and ``lsr_rel_l2`` (LSR predictor).
    """

    network: torch.nn.Module
    refined: object
    history: list = field(default_factory=list)


def lbfgs_fit(model, loss_fn, *, max_iter: int, lr: float = 1.0, history_size: int = 50):
    """Run ``max_iter`` iterations of full-batch L-BFGS (strong Wolfe line search) on
    ``loss_fn()``, in place on ``model``; returns the final loss."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=lr,
        max_iter=max_iter,
        history_size=history_size,
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(loss_fn())


def iterative_refine(
    model: torch.nn.Module,
    *,
    blocks: Callable,
    sample_points: Callable,
    collocation: Callable,
    weights: Mapping[str, float] | None = None,
    pde_block: str = "pde",
    outer_iters: int = 5,
    method: Method | str | None = None,
    products: Products | None = None,
    subspace_points: int = 1000,
    dtau: float = 1e-4,
    align: str = "lbfgs",
    align_iters: int = 300,
    align_lr: float | None = None,
    evaluate: Callable | None = None,
    time_budget: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    rank: int | None = None,
    refine_kwargs: Mapping | None = None,
) -> IterativeResult:
    """Iterative LSR: resample, one-shot LSR on the physics residual, nonlinear alignment.

    Each outer iteration
    1. draws fresh collocation points ``pts = sample_points(generator)``;
    2. refines a copy of the network by one-shot LSR on the stacked physics residual
       (:func:`lsr_scale.pde.stack_residuals` of ``blocks(net, *pts)`` with ``weights``),
       the subspace coming from the output Jacobian at ``k + subspace_points`` random
       collocation points (``subspace="output"``; ``k`` is the method's rank);
    3. evaluates the linear predictor ``U`` at ``collocation(pts)`` and fits the *network* to
       it by minimizing the stacked ``[sqrt(w_b) r_b (b != pde) ; r_pde + (u - U) / dtau]``
       (block-scaled like the LSR residual) with L-BFGS or Adam: mostly a supervised fit of
       the network to the LSR predictor when ``dtau`` is small.

    Parameters
    ----------
    model : nn.Module
        The trained network (left unchanged; the iteration works on a copy).
    blocks : callable
        ``blocks(net, *pts) -> dict name -> fn(params) -> Tensor``: the raw residual blocks
        (e.g. ``{"pde": ..., "bc": ...}``) as functions of ``net``'s parameter dict.
    sample_points : callable
        ``sample_points(generator) -> tuple`` of point sets passed to ``blocks``.
    collocation : callable
        ``collocation(pts) -> inputs``: the model inputs of the ``pde_block`` rows, where
        ``u`` is compared with ``U``.
    weights : mapping, optional
        Loss weights ``lambda_i`` per block name (default 1).
    outer_iters : int
        Outer iterations (stops early when ``time_budget`` seconds are spent).
    method : Subspace or Krylov, optional
        The LSR step (default ``Subspace(rank=300)``). A :class:`~lsr_scale.Subspace` gets
        ``subspace="output"`` and the sampled ``subspace_inputs`` each iteration (its rank
        capped at the number of collocation points); a :class:`~lsr_scale.Krylov` is used
        as given.
    products : Products, optional
        How Jacobian products are taken (see :func:`lsr_scale.refine`).
    subspace_points : int
        The extra output-Jacobian points beyond the rank (paper: k + 1,000 points).
    dtau : float
        Pseudo-time step of the alignment.
    align : {"lbfgs", "adam"}
        Alignment optimizer; ``align_iters`` iterations (``align_lr``: default 1 for
        L-BFGS, 1e-3 for Adam).
    evaluate : callable, optional
        ``evaluate(predict) -> float`` test error of a predictor ``x -> u``; timed apart.
    time_budget : float, optional
        Stop after the outer iteration that exceeds this many seconds.
    generator : torch.Generator, optional
        The only source of randomness when given (sampling, subspace points, the
        randomized SVD); ``None`` uses torch's global RNG.
    progress : bool, optional
        Show a progress bar (default: only on a terminal).
    rank, refine_kwargs :
        Deprecated (0.1): use ``method=ls.Subspace(rank=...)``; removed in 0.3.

    Returns
    -------
    IterativeResult

    References
    ----------
    W. Cao and W. Zhang, "A universal linearized subspace refinement framework for neural
    networks", arXiv:2601.13989 (2026).
    """
    if rank is not None or refine_kwargs is not None:
        if method is not None:
            raise TypeError(
                "iterative_refine: got method= and the old rank=/refine_kwargs=; use one"
            )
        kw = dict(refine_kwargs or {})
        kw.pop("method", None)
        if rank is not None:
            kw["rank"] = rank
        warnings.warn(
            "iterative_refine: rank= and refine_kwargs= are deprecated and will be removed in "
            f"0.3; pass method=ls.Subspace({', '.join(f'{k}={v!r}' for k, v in kw.items())})",
            DeprecationWarning,
            stacklevel=2,
        )
        method = Subspace(**kw)
    method = Subspace(rank=300) if method is None else as_method(method)
    if isinstance(method, Subspace) and not isinstance(method.rank, int):
        raise ValueError(
            "method: expected a Subspace with an int rank for Iterative LSR, "
            f"got rank={method.rank!r}"
        )
    if outer_iters < 0:
        raise ValueError(f"outer_iters: expected a non-negative int, got {outer_iters}")
    if align not in ("lbfgs", "adam"):
        raise ValueError(f"align: expected 'lbfgs' or 'adam', got {align!r}")
    if not dtau > 0:
        raise ValueError(f"dtau: expected a positive number, got {dtau}")
    gen = generator
    weights = dict(weights or {})
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(True)
    history: list[dict] = []
    wall = 0.0

    def physics_loss(pts):
        b = blocks(net, *pts)
        p = dict(net.named_parameters())
        return sum(weights.get(k, 1.0) * fn(p).square().mean() for k, fn in b.items())

    def record(entry, pts):
        with torch.no_grad():
            entry["residual"] = float(physics_loss(pts))
        if evaluate is not None:
            entry["rel_l2"] = float(evaluate(net))
        history.append(entry)

    pts0 = sample_points(gen)
    record({"outer": 0, "wall_s": 0.0, "lsr_s": 0.0, "align_s": 0.0}, pts0)
    refined = None
    bar = _progress(
        total=outer_iters, desc="iterative LSR", disable=None if progress is None else not progress
    )
    for it in range(1, outer_iters + 1):
        t0 = time.perf_counter()
        pts = sample_points(gen)
        raw = blocks(net, *pts)
        residual_fn = stack_residuals({k: (fn, weights.get(k, 1.0)) for k, fn in raw.items()})
        x = collocation(pts)
        xs = x if isinstance(x, tuple) else (x,)
        step = method
        if isinstance(method, Subspace):
            n_pts = xs[0].shape[0]
            take = torch.randperm(n_pts, generator=gen)[: min(n_pts, method.rank + subspace_points)]
            sub = tuple(t[take.to(t.device)] for t in xs)
            step = dataclasses.replace(
                method,
                rank=min(method.rank, take.numel()),
                subspace="output",
                subspace_inputs=sub if isinstance(x, tuple) else sub[0],
            )
        refined = refine(
            net,
            residual_fn=residual_fn,
            method=step,
            products=products,
            generator=gen,
            progress_bar=False,
        )
        with torch.no_grad():
            target = refined.predict(x).detach()
        t1 = time.perf_counter()
        lsr_err = float(evaluate(refined)) if evaluate is not None else None
        t2 = time.perf_counter()

        names = list(raw)

        def align_loss(raw=raw, xs=xs, target=target, names=names):
            p = dict(net.named_parameters())
            total, parts = 0.0, []
            for k in names:
                r = raw[k](p).reshape(-1)
                if k == pde_block:
                    u = functional_call(net, p, xs).reshape(-1)
                    r = r + (u - target.reshape(-1)) / dtau
                parts.append((k, r))
            for k, r in parts:
                total = total + weights.get(k, 1.0) * r.square().mean()
            return total

        if align == "lbfgs":
            loss = lbfgs_fit(net, align_loss, max_iter=align_iters, lr=align_lr or 1.0)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=align_lr or 1e-3)
            for _ in range(align_iters):
                opt.zero_grad(set_to_none=True)
                lv = align_loss()
                lv.backward()
                opt.step()
            with torch.no_grad():
                loss = float(align_loss())
        t3 = time.perf_counter()
        wall += (t1 - t0) + (t3 - t2)
        entry = {
            "outer": it,
            "wall_s": wall,
            "lsr_s": t1 - t0,
            "align_s": t3 - t2,
            "loss": loss,
            "rank": refined.info.get("rank"),
        }
        if lsr_err is not None:
            entry["lsr_rel_l2"] = lsr_err
        record(entry, pts)
        bar.set_postfix_str(f"rel_l2={entry.get('rel_l2', float('nan')):.2e} wall={wall:.1f}s")
        bar.update(1)
        if time_budget is not None and wall >= time_budget:
            break
    bar.close()
    for p in net.parameters():
        p.requires_grad_(False)
    return IterativeResult(network=net, refined=refined, history=history)
