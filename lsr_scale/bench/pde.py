"""Suite ``pde``: what a Laplacian residual's parameter JVP and VJP cost against a plain
forward pass.

For each network and point count, the products LSR takes of three residuals in the
parameters, each timed against the plain forward pass ``q(theta, x)`` (no autograd):

* ``plain``: the supervised residual ``q(theta, x)`` (the reference product cost);
* ``forward``: the Laplacian by :func:`lsr_scale.pde.forward_laplacian`;
* ``func``: the Laplacian as the ``torch.func`` Hessian trace (``jacfwd(jacrev)`` per point,
  :func:`lsr_scale.pde.laplacian` with ``route="func"``).

The products are those :class:`lsr_scale.JacobianOperator` takes with its defaults: the JVP
through a cached ``torch.func.linearize`` (a fresh ``torch.func.jvp`` where torch cannot
linearize, as for the nested ``func`` route) and the VJP through a cached ``torch.func.vjp``.
``eval`` is the residual itself. Times are medians (:func:`~._harness.timeit`); on a CPU the
process CPU time (the cores may be shared), on CUDA the synchronized wall time::

    lsr-scale bench pde                  # -> bench/results/pde_cpu.{json,md}
    lsr-scale bench pde --device cuda    # -> pde_<gpu>.{json,md}
    lsr-scale bench pde --quick          # the small cases only (pde_cpu_quick.*)

``--before FILE`` adds the ratios of an earlier run's JSON to the markdown table.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import func as tfunc

from ._harness import Record, suite, timeit

# name, builder, points; the first is the paper's Poisson case
CASES = {
    "MLP [2, 128x6, 1]": (lambda m: m.MLP([2] + [128] * 6 + [1]), 20000),
    "MLP [2, 64x4, 1]": (lambda m: m.MLP([2] + [64] * 4 + [1]), 2000),
    "MLP [2, 32x3, 1]": (lambda m: m.MLP([2] + [32] * 3 + [1]), 500),
    "ModifiedMLP [2, 64x4, 1]": (lambda m: m.ModifiedMLP([2] + [64] * 4 + [1]), 2000),
    "DeepONet trunk [2, 64x4], branch [50, 64x2]": (
        lambda m: m.DeepONet([50, 64, 64, 64], [2, 64, 64, 64, 64]),
        2000,
    ),
}
QUICK = ("MLP [2, 64x4, 1]", "MLP [2, 32x3, 1]")
ROUTES = ("plain", "forward", "func")


def _residuals(net, x, u):
    """name -> residual_fn(params) for the plain output and the two Laplacian routes."""
    from .. import pde

    rows = () if u is None else (u,)
    pts = tuple(r.expand(x.shape[0], -1) for r in rows)

    def plain(p):
        return tfunc.functional_call(net, p, (x,) if u is None else (u, x))[:, 0]

    def forward(p):
        return pde.forward_laplacian(net, x, p, **({"rows": rows} if rows else {}))[2]

    def func(p):  # what pde.laplacian(net, x, *rows, params=p, route="func") takes
        return pde.laplacian(pde.scalar_fn(net, p), x, *pts)

    return {"plain": plain, "forward": forward, "func": func}


def _time_route(fn, params, tangent, time, t_fwd) -> dict:
    out, vjp_fn = tfunc.vjp(fn, params)
    w = torch.randn_like(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, lin = tfunc.linearize(fn, params)
        jvp_kind = "linearize"
    except RuntimeError:  # nested forward mode (the func route): a fresh jvp per product
        lin, jvp_kind = (lambda v: tfunc.jvp(fn, (params,), (v,))), "jvp"
    with torch.no_grad():
        t = {"eval_s": time(lambda: fn(params))}
    t["jvp_s"] = time(lambda: lin(tangent))
    t["vjp_s"] = time(lambda: vjp_fn(w))
    return {**t, "jvp_kind": jvp_kind, **{k[:-2] + "_x": v / t_fwd for k, v in t.items()}}


def run_case(name, args) -> dict:
    from .. import models, pde

    build, n = CASES[name]
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    net = build(models).to(device=args.device, dtype=dtype)
    x = torch.rand(n, 2, device=args.device, dtype=dtype)
    u = torch.randn(1, 50, device=x.device, dtype=x.dtype) if name.startswith("DeepONet") else None
    params = {k: v.detach() for k, v in net.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    fns = _residuals(net, x, u)
    clock = "wall" if args.device.type == "cuda" else "cpu"

    def timer(repeat):
        return lambda fn: timeit(fn, repeat=repeat, device=args.device, clock=clock)

    with torch.no_grad():
        t_fwd = timer(args.repeats)(lambda: fns["plain"](params))
    row = {
        "case": name,
        "points": n,
        "params": sum(p.numel() for p in params.values()),
        "forward_s": t_fwd,
    }
    for route in args.routes or ROUTES:
        if route == "forward" and not pde.supports_forward_laplacian(net):
            continue
        t = timer(args.func_repeats if route == "func" else args.repeats)
        row[route] = _time_route(fns[route], params, tangent, t, t_fwd)
    return row


def _lines(rows, before) -> list[dict]:
    """One table line per (case, route), with the route's ratios to the plain products."""
    prev = {(r["case"], r["points"]): r for r in before or []}
    out = []
    for r in rows:
        for route in (k for k in ROUTES if k in r):
            e, plain = r[route], r.get("plain")
            b = prev.get((r["case"], r["points"]), {}).get(route) or {}
            out.append(
                {
                    **r,
                    **e,
                    "route": route,
                    "fwd_ms": 1e3 * r["forward_s"],
                    "rel_jvp": plain and e["jvp_s"] / plain["jvp_s"],
                    "rel_vjp": plain and e["vjp_s"] / plain["vjp_s"],
                    "b_jvp": b.get("jvp_x"),
                    "b_vjp": b.get("vjp_x"),
                }
            )
    return out


@suite("pde", "PDE residual products: plain autograd, forward Laplacian, torch.func")
def run(args) -> None:
    rec = Record("pde", out=args.out, device=args.device, quick=args.quick)
    rec.set(
        dtype=args.dtype,
        repeats=args.repeats,
        func_repeats=args.func_repeats,
        clock="wall time (CUDA synchronized)" if args.device.type == "cuda" else "process CPU time",
    )
    for name in args.cases or (QUICK if args.quick else CASES):
        row = rec.add(run_case(name, args), key=("case", "points"))
        ratios = {
            k: (round(v["jvp_x"], 1), round(v["vjp_x"], 1))
            for k, v in row.items()
            if isinstance(v, dict)
        }
        print(name, row["points"], ratios, flush=True)
    before = json.loads(Path(args.before).read_text())["rows"] if args.before else None
    cols = [
        ("case", "case"),
        ("points", "points"),
        ("fwd_ms:.1f", "forward pass (ms)"),
        ("route", "route"),
        ("eval_x:.1f", "eval / fwd"),
        ("jvp_x:.1f", "JVP / fwd"),
        ("vjp_x:.1f", "VJP / fwd"),
        ("rel_jvp:.1f", "JVP / plain JVP"),
        ("rel_vjp:.1f", "VJP / plain VJP"),
    ]
    if before:
        cols += [("b_jvp:.1f", "before: JVP / fwd"), ("b_vjp:.1f", "before: VJP / fwd")]
    note = (
        f"{args.dtype}; times are {rec.meta['clock']}, medians of {args.repeats} repeats "
        f"({args.func_repeats} for `func`). Ratios are to one plain forward pass `q(theta, x)` "
        "without autograd. `forward` is `lsr_scale.pde.forward_laplacian`, `func` the "
        "`torch.func` Hessian trace; `plain` the supervised residual's products, for scale. "
        "JVP: cached `torch.func.linearize` (`func`: fresh `torch.func.jvp`, torch cannot "
        "linearize nested forward mode); VJP: cached `torch.func.vjp`."
    )
    rec.markdown(
        "Laplacian residual products against a plain forward pass",
        cols,
        command=args.command,
        rows=_lines(rec.rows, before),
        notes=[note],
    )


@run.options
def _(parser) -> None:
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--func-repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), help="default: all")
    parser.add_argument("--routes", nargs="*", choices=ROUTES, help="default: all three")
    parser.add_argument("--before", default=None, help="JSON of an earlier run, for the table")
