"""``lsr-scale demo``: train a small MLP, refine it three ways, print the table, plot."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

from .._utils import PeakMemory, resolve_device
from ..problems import FunctionProblem
from ..refine import Krylov, Subspace, refine
from ._tables import fmt_bytes, markdown_table

__all__ = ["run_demo"]


def run_demo(args) -> list[dict]:
    """Train the function-approximation MLP, refine it three ways, print a table, plot."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = (2, *[args.width] * args.depth, 1)
    prob = FunctionProblem(n_train=args.n_train, widths=widths, seed=args.seed, device=str(device))
    show = False if args.no_progress else None
    print(
        f"lsr-scale demo: sin(pi x) sin(pi y) on [-1,1]^2, MLP {list(widths)} tanh "
        f"({prob.n_params:,} parameters), {args.n_train:,} training points, device {device}",
        flush=True,
    )
    model = prob.make_model()
    t0 = time.perf_counter()
    with PeakMemory(device) as pm_train:
        prob.train(model, epochs=args.epochs, lr=args.lr, progress=show)
    t_train = time.perf_counter() - t0
    base_err = prob.test_error(model)
    rows = [
        {
            "method": f"trained (Adam, {args.epochs} epochs)",
            "rel_l2": base_err,
            "time_s": t_train,
            "peak": pm_train.peak_bytes,
            "iters": "",
            "products": "",
        }
    ]
    # "auto": refine gets no dtype= and each method picks its own precision (the defaults)
    dtype = {"float64": torch.float64, "float32": torch.float32, "auto": None}[args.dtype]
    data = (prob.x_train, prob.y_train)
    gen = torch.Generator().manual_seed(args.seed)
    x_test = prob.x_test.to(dtype) if dtype is not None else prob.x_test
    k = min(args.rank, prob.n_params, args.n_train)
    runs = [
        ("subspace", Subspace(rank=k), f"one-shot LSR (subspace, k={k})"),
        (
            "krylov_none",
            # no stall rule: unpreconditioned LSMR creeps, and the point is how far it gets
            Krylov(preconditioner=None, maxiter=args.krylov_iters, stall=None),
            f"Krylov LSR (LSMR, no preconditioner, {args.krylov_iters} iterations)",
        ),
        (
            "krylov_auto",
            # every default: preconditioner chosen by shape, float64 solve, its own stop
            Krylov(maxiter=args.krylov_iters),
            "Krylov LSR (defaults)",
        ),
    ]
    refined_models = {}
    for key, method, label in runs:
        with warnings.catch_warnings():
            # the unpreconditioned run is meant to use every iteration: no maxiter warning
            if key == "krylov_none":
                warnings.filterwarnings("ignore", "Krylov: stopped at maxiter", RuntimeWarning)
            refined = refine(
                model, data=data, method=method, dtype=dtype, generator=gen, progress_bar=show
            )
        refined_models[key] = refined
        err = prob.test_error(lambda x, r=refined: r(x if dtype is None else x.to(dtype)))
        info = refined.info
        iters = info.get("iterations", "")
        if key == "krylov_auto":
            label = (
                f"Krylov LSR (defaults: {info['preconditioner']['name']} rank "
                f"{info['preconditioner'].get('rank')}, "
                f"{info['precision'].removeprefix('torch.')} solve, {_stop_label(info['stop'])})"
            )
        rows.append(
            {
                "method": label,
                "rel_l2": err,
                "time_s": info["times"]["total"],
                "peak": info["peak_mem_bytes"],
                "iters": iters,
                "products": f"{info['num_jvp']}+{info['num_vjp']}",
            }
        )
    for r in rows:
        r["reduction"] = f"{base_err / r['rel_l2']:.1f}x"
        r["rel_l2_s"] = f"{r['rel_l2']:.3e}"
        r["time_s_s"] = f"{r['time_s']:.2f}"
        r["peak_s"] = fmt_bytes(r["peak"])
    cols = [
        ("method", "method"),
        ("rel_l2_s", "test rel. L2"),
        ("reduction", "reduction"),
        ("time_s_s", "time (s)"),
        ("peak_s", f"peak mem ({'GPU' if device.type == 'cuda' else 'RSS'})"),
        ("iters", "LSMR iters"),
        ("products", "JVP+VJP"),
    ]
    print()
    print(
        markdown_table([t for _, t in cols], [[str(r.get(k, "")) for k, _ in cols] for r in rows])
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(
        json.dumps(
            [
                {k: r[k] for k in ("method", "rel_l2", "time_s", "peak", "iters", "products")}
                for r in rows
            ],
            indent=2,
            default=str,
        )
    )
    if not args.no_plot:
        path = _plot_demo(prob, model, refined_models, x_test, out / "demo.png")
        if path:
            print(f"\nplot: {path}")
    print(f"results: {out / 'demo.json'}")
    return rows


def _stop_label(stop: str) -> str:
    head = stop.split(":")[0]
    if head == "stalled":
        return "stall rule"
    if head == "validation":
        return "validation"
    return "maxiter" if head == "7" else "converged"


def _plot_demo(prob, model, refined_models, x_test, path):
    try:  # matplotlib is optional (the plot extra): imported only when a plot is drawn
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed: no plot (pip install 'lsr_scale[plot]')", file=sys.stderr
        )
        return None
    g = prob.grid
    y = prob.y_test.double().reshape(g, g).cpu()
    with torch.no_grad():
        fields = {"trained": model(prob.x_test).double().reshape(g, g).cpu() - y}
        for key, title in (("subspace", "one-shot LSR"), ("krylov_auto", "Krylov LSR")):
            fields[title] = refined_models[key](x_test).double().reshape(g, g).cpu() - y
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (title, err) in zip(axes[:3], fields.items()):
        vmax = float(err.abs().max())
        im = ax.imshow(
            err.T.numpy(),
            origin="lower",
            extent=(-1, 1, -1, 1),
            cmap="RdBu_r",
            vmin=-vmax,
            vmax=vmax,
        )
        rel = float(err.norm() / y.norm())
        ax.set_title(f"{title}: error (rel. L2 {rel:.2e})")
        fig.colorbar(im, ax=ax, format="%.0e")
    ax = axes[3]
    for key, label in (("krylov_none", "no preconditioner"), ("krylov_auto", "preconditioned")):
        info = refined_models[key].info
        hist = info["solver"].history
        if hist and len(hist.get("normr", [])):
            build = (info["preconditioner"] or {}).get("build_matvecs", 0) or 0
            pairs = build + torch.arange(1, len(hist["normr"]) + 1)
            ax.semilogy(pairs.numpy(), hist["normr"].numpy(), label=label)
    ax.set_xlabel("JVP+VJP pairs (preconditioner build included)")
    ax.set_ylabel("||G0 delta + f0|| (LSMR estimate)")
    ax.set_title("LSMR convergence")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
