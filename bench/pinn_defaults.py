"""The user-written PINN of issue 16: default Krylov against default subspace refinement.

``-u'' = pi^2 sin(pi x)`` on (0, 1), ``u(0) = u(1) = 0``; a tanh MLP 1-32-32-32-1 in float32,
400 interior points, the two boundary rows weighted 10, 1,500 Adam steps (lr 1e-3), the
residual through ``torch.func`` (a ``residual_fn``). Each seed trains its own network and
refines it with ``ls.refine(model, residual_fn=..., method=...)`` and nothing else. The
interior points are drawn uniformly (``--points random``) or evenly spaced.

    python bench/pinn_defaults.py --seeds 0 1 2 3 [--points linspace]

Writes ``bench/results/pinn_defaults_cpu.{json,md}``; a rerun skips recorded seeds.
``--quick``: seed 0, 200 Adam steps, into ``pinn_defaults_cpu_quick.*``.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

import lsr_scale as ls
from lsr_scale.bench._harness import Record, parse_script


def make(seed: int, points: str, steps: int = 1500):
    torch.manual_seed(seed)
    L, T = torch.nn.Linear, torch.nn.Tanh
    net = torch.nn.Sequential(L(1, 32), T(), L(32, 32), T(), L(32, 32), T(), L(32, 1))
    g = torch.Generator().manual_seed(seed)
    if points == "random":
        x = torch.rand(400, 1, generator=g)
    else:
        x = torch.linspace(0, 1, 402)[1:-1, None]
    xb = torch.tensor([[0.0], [1.0]])
    f = math.pi**2 * torch.sin(math.pi * x).reshape(-1)

    def u(p, pt):
        return torch.func.functional_call(net, p, (pt[None],)).reshape(())

    du = torch.func.grad(u, argnums=1)
    d2 = torch.func.grad(lambda p, pt: du(p, pt).sum(), argnums=1)

    def residual(p):
        upp = torch.vmap(lambda pt: d2(p, pt).sum())(x)
        ub = torch.func.functional_call(net, p, (xb,)).reshape(-1)
        return torch.cat([-upp - f, 10 * ub])

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        residual(dict(net.named_parameters())).square().mean().backward()
        opt.step()
    xt = torch.linspace(0, 1, 1001)[:, None]
    return net, residual, (xt, torch.sin(math.pi * xt))


def rel(f, test):
    x, y = test
    with torch.no_grad():
        return float((f(x).double() - y.double()).norm() / y.double().norm())


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4]),
        p.add_argument("--points", choices=("random", "linspace"), default="random"),
        p.add_argument("--force", action="store_true")), argv)  # fmt: skip
    rec = Record("pinn_defaults", out=args.out, device="cpu", quick=args.quick)
    for seed in [0] if args.quick else args.seeds:
        key = f"{args.points}/{seed}"
        if rec.has(key=key) and not args.force:
            continue
        net, residual, test = make(seed, args.points, 200 if args.quick else 1500)
        row = {"key": key, "seed": seed, "points": args.points, "trained": rel(net, test)}
        for method in ("subspace", "krylov"):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ls.refine(net, residual_fn=residual, method=method, progress_bar=False,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
            row[method] = {
                "test_rel_l2": rel(r, test), "wall_s": time.perf_counter() - t0,
                "rank": r.info.get("rank"), "iterations": r.info.get("iterations"),
                "stop": r.info.get("stop"),
                "precond_rank": (r.info.get("preconditioner") or {}).get("rank"),
            }  # fmt: skip
        print(key, rec.add(row, key=("key",)), flush=True)
    rec.markdown("PINN -u'' = pi^2 sin(pi x): default Krylov against default subspace", [
        "points", "seed", "trained:.2e",
        (lambda r: f"{r['subspace']['test_rel_l2']:.2e}", "subspace"),
        (lambda r: f"{r['krylov']['test_rel_l2']:.2e}", "krylov"),
        # the rule that stopped Krylov: stalled, validation, ...
        (lambda r: f"{r['krylov']['iterations']}, {(r['krylov']['stop'] or '').split(':')[0]}",
         "krylov iterations, stop"),
    ], command=args.command)  # fmt: skip


if __name__ == "__main__":
    main()
