"""What does a Laplacian residual's parameter JVP and VJP cost against a plain forward pass?

For each network and point count, the products LSR takes of three residuals in the
parameters, each timed against the plain forward pass ``q(theta, x)`` (no autograd):

* ``plain``: the supervised residual ``q(theta, x)`` (the reference product cost);
* ``forward``: the Laplacian by :func:`lsr_scale.pde.forward_laplacian`;
* ``func``: the Laplacian as the ``torch.func`` Hessian trace (``jacfwd(jacrev)`` per point,
  :func:`lsr_scale.pde.laplacian` with ``route="func"``).

The products are those :class:`lsr_scale.JacobianOperator` takes with its defaults: the JVP
through a cached ``torch.func.linearize`` (a fresh ``torch.func.jvp`` where torch cannot
linearize, as for the nested ``func`` route) and the VJP through a cached ``torch.func.vjp``.
``eval`` is the residual itself. Times are the minimum over repeats; on a CPU they are the
process CPU time (the cores may be shared), on CUDA the wall time between synchronizations.

    python bench/bench_pde.py --threads 1                  # -> bench/results/pde_cpu.{json,md}
    python bench/bench_pde.py --device cuda --out bench/results/pde_gpu
    python bench/bench_pde.py --quick                      # the small cases only

``--before FILE`` adds the ratios of an earlier run (e.g. of the previous implementation) to
the markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import func as tfunc

from lsr_scale import pde
from lsr_scale.models import MLP, DeepONet, ModifiedMLP

RESULTS = Path(__file__).resolve().parent / "results"

# name, builder, points, routes; the first is the paper's Poisson case
CASES = [
    ("MLP [2, 128x6, 1]", lambda: MLP([2] + [128] * 6 + [1]), 20000, ("plain", "forward", "func")),
    ("MLP [2, 64x4, 1]", lambda: MLP([2] + [64] * 4 + [1]), 2000, ("plain", "forward", "func")),
    ("MLP [2, 32x3, 1]", lambda: MLP([2] + [32] * 3 + [1]), 500, ("plain", "forward", "func")),
    (
        "ModifiedMLP [2, 64x4, 1]",
        lambda: ModifiedMLP([2] + [64] * 4 + [1]),
        2000,
        ("plain", "forward", "func"),
    ),
    (
        "DeepONet trunk [2, 64x4], branch [50, 64x2]",
        lambda: DeepONet([50, 64, 64, 64], [2, 64, 64, 64, 64]),
        2000,
        ("plain", "forward", "func"),
    ),
]
QUICK = {"MLP [2, 32x3, 1]", "MLP [2, 64x4, 1]"}


def _device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} (CPU, {threads} torch thread{'s' if threads > 1 else ''})"


def _timer(device: torch.device, repeats: int):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def run(fn) -> float:
        fn()
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            fn()
            sync()
            best = min(best, clock() - t0)
        return best

    return run


def _residuals(net, x, u):
    """name -> residual_fn(params) for the plain output and the two Laplacian routes."""
    rows = () if u is None else (u,)

    def plain(p):
        args = (x,) if u is None else (u, x)
        return tfunc.functional_call(net, p, args)[:, 0]

    def forward(p):
        kw = {"rows": rows} if rows else {}
        return pde.forward_laplacian(net, x, p, **kw)[2]

    pts = tuple(r.expand(x.shape[0], -1) for r in rows)

    def func(p):  # what pde.laplacian(net, x, *rows, params=p, route="func") takes
        return pde.laplacian(pde.scalar_fn(net, p), x, *pts)

    return {"plain": plain, "forward": forward, "func": func}


def run_case(name, build, n, routes, device, dtype, repeats, func_repeats):
    torch.manual_seed(0)
    net = build().to(device=device, dtype=dtype)
    d = 2
    x = torch.rand(n, d, device=device, dtype=dtype)
    u = torch.randn(1, 50, device=device, dtype=dtype) if isinstance(net, DeepONet) else None
    params = {k: v.detach() for k, v in net.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    fns = _residuals(net, x, u)
    timer = _timer(device, repeats)
    with torch.no_grad():
        t_fwd = timer(lambda: fns["plain"](params))
    row = {
        "case": name,
        "points": n,
        "params": sum(p.numel() for p in params.values()),
        "forward_s": t_fwd,
    }
    if "forward" in routes and not pde.supports_forward_laplacian(net):
        routes = tuple(r for r in routes if r != "forward")
    for route in routes:
        t = timer if route != "func" else _timer(device, func_repeats)
        row[route] = _time_route(fns[route], params, tangent, t, t_fwd)
    return row


def _time_route(fn, params, tangent, t, t_fwd) -> dict:
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
        t_eval = t(lambda: fn(params))
    t_jvp = t(lambda: lin(tangent))
    t_vjp = t(lambda: vjp_fn(w))
    return {
        "eval_s": t_eval,
        "jvp_s": t_jvp,
        "vjp_s": t_vjp,
        "jvp_kind": jvp_kind,
        "eval_x": t_eval / t_fwd,
        "jvp_x": t_jvp / t_fwd,
        "vjp_x": t_vjp / t_fwd,
    }


def _fmt(v):
    return "–" if v is None else f"{v:.1f}"


def markdown(meta, rows, before=None) -> str:
    prev = {}
    for r in before or []:
        prev[(r["case"], r["points"])] = r
    lines = [
        "# Laplacian residual products against a plain forward pass",
        "",
        f"Device: {meta['device']}; {meta['dtype']}; torch {meta['torch']}; times are "
        f"{meta['clock']}, minimum over {meta['repeats']} repeats. Ratios are to one plain "
        "forward pass `q(theta, x)` without autograd. `forward` is "
        "`lsr_scale.pde.forward_laplacian`, `func` the `torch.func` Hessian trace; "
        "`plain` the supervised residual's products, for scale. JVP: cached "
        "`torch.func.linearize` (`func`: fresh `torch.func.jvp`, torch cannot linearize "
        "nested forward mode); VJP: cached `torch.func.vjp`. Written by `bench/bench_pde.py`.",
        "",
        "| case | points | forward pass | route | eval / fwd | JVP / fwd | VJP / fwd "
        "| JVP / plain JVP | VJP / plain VJP |"
        + (" before: JVP / fwd | before: VJP / fwd |" if before else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if before else ""),
    ]
    for r in rows:
        plain = r.get("plain")
        for route in ("plain", "forward", "func"):
            if route not in r:
                continue
            e = r[route]
            rel_j = e["jvp_s"] / plain["jvp_s"] if plain else None
            rel_v = e["vjp_s"] / plain["vjp_s"] if plain else None
            line = (
                f"| {r['case']} | {r['points']:,} | {r['forward_s'] * 1e3:.1f} ms | {route} "
                f"| {_fmt(e['eval_x'])} | {_fmt(e['jvp_x'])} | {_fmt(e['vjp_x'])} "
                f"| {_fmt(rel_j)} | {_fmt(rel_v)} |"
            )
            if before:
                b = prev.get((r["case"], r["points"]), {}).get(route)
                line += f" {_fmt(b and b['jvp_x'])} | {_fmt(b and b['vjp_x'])} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--func-repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the small cases only")
    ap.add_argument("--cases", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--routes", nargs="*", help="routes to run (default: plain forward func)")
    ap.add_argument("--out", default=None, help="path prefix (default bench/results/pde_<dev>)")
    ap.add_argument("--before", default=None, help="JSON of an earlier run, for the table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    out = (
        Path(args.out) if args.out else RESULTS / f"pde_{'gpu' if device.type == 'cuda' else 'cpu'}"
    )
    meta = {
        "device": _device_name(device, args.threads),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "clock": "wall time (CUDA synchronized)" if device.type == "cuda" else "process CPU time",
    }
    rows = []
    for name, build, n, routes in CASES:
        if (args.quick and name not in QUICK) or (args.cases and name not in args.cases):
            continue
        routes = tuple(r for r in routes if not args.routes or r in args.routes)
        rows.append(
            run_case(name, build, n, routes, device, dtype, args.repeats, args.func_repeats)
        )
        r = rows[-1]
        print(
            name,
            n,
            {
                k: (round(v["jvp_x"], 1), round(v["vjp_x"], 1))
                for k, v in r.items()
                if isinstance(v, dict)
            },
            flush=True,
        )
    before = json.loads(Path(args.before).read_text())["rows"] if args.before else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(meta, rows, before))
    return rows


if __name__ == "__main__":
    main()
