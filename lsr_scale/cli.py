"""Command-line interface: ``lsr-scale demo``, ``lsr-scale reproduce``, ``lsr-scale info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main", "run_demo"]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_table(rows: list[dict], cols: list[tuple[str, str]], file=None) -> None:
    file = file or sys.stdout
    header = [title for _, title in cols]
    body = [[str(r.get(key, "")) for key, _ in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line, file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for b in body:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |", file=file)


def run_demo(args) -> list[dict]:
    """Train the function-approximation MLP, refine it three ways, print a table, plot."""
    import lsr_scale as ls
    from lsr_scale._utils import PeakMemory, resolve_device
    from lsr_scale.problems import FunctionProblem

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
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    data = (prob.x_train, prob.y_train)
    gen = torch.Generator().manual_seed(args.seed)
    x_test = prob.x_test.to(dtype)
    k = min(args.rank, prob.n_params, args.n_train)
    runs = [
        ("subspace", dict(method="subspace", rank=k), f"one-shot LSR (subspace, k={k})"),
        (
            "krylov_none",
            dict(method="krylov", preconditioner=None, maxiter=args.krylov_iters),
            f"Krylov LSR (LSMR, no preconditioner, {args.krylov_iters} it max)",
        ),
        (
            "krylov_auto",
            # the preconditioner gets the subspace's rank: a like-for-like comparison
            dict(method="krylov", preconditioner="auto", precond_rank=k, maxiter=args.krylov_iters),
            "Krylov LSR (LSMR, preconditioner='auto')",
        ),
    ]
    refined_models = {}
    for key, kwargs, label in runs:
        refined = ls.refine(
            model, data=data, dtype=dtype, generator=gen, progress_bar=show, **kwargs
        )
        refined_models[key] = refined
        err = prob.test_error(lambda x, r=refined: r(x.to(dtype)))
        info = refined.info
        iters = info.get("iterations", "")
        if key == "krylov_auto":
            label = (
                f"Krylov LSR (LSMR, {info['preconditioner']['name']} preconditioner, "
                f"rank {info['preconditioner'].get('rank')})"
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
        r["peak_s"] = _fmt_bytes(r["peak"])
    print()
    _print_table(
        rows,
        [
            ("method", "method"),
            ("rel_l2_s", "test rel. L2"),
            ("reduction", "reduction"),
            ("time_s_s", "time (s)"),
            ("peak_s", f"peak mem ({'GPU' if device.type == 'cuda' else 'RSS'})"),
            ("iters", "LSMR iters"),
            ("products", "JVP+VJP"),
        ],
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


def _plot_demo(prob, model, refined_models, x_test, path):
    try:
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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsr-scale",
        description="Matrix-free Linearized Subspace Refinement (LSR) of trained networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small MLP, refine it, print the error table (runs on a CPU in ~1 min)",
        description=(
            "Train a tanh MLP with Adam on sin(pi x) sin(pi y) over [-1,1]^2, then refine it "
            "with one-shot subspace LSR and with matrix-free Krylov LSR (unpreconditioned and "
            "preconditioned). Prints test relative L2 errors, reduction factors, time, peak "
            "memory and LSMR iterations; writes demo.json and demo.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--n-train", type=int, default=2000, help="training points")
    demo.add_argument("--width", type=int, default=32, help="hidden-layer width")
    demo.add_argument("--depth", type=int, default=3, help="number of hidden layers")
    demo.add_argument("--epochs", type=int, default=10000, help="Adam epochs (full batch)")
    demo.add_argument("--lr", type=float, default=3e-3, help="initial Adam learning rate")
    demo.add_argument(
        "--rank",
        type=int,
        default=600,
        help="subspace rank k of one-shot LSR, also the rank of the Krylov preconditioner",
    )
    demo.add_argument(
        "--krylov-iters", type=int, default=300, help="LSMR iteration limit for Krylov LSR"
    )
    demo.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the linearized solve (training is float32)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for data, init and sketches")
    demo.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch default); the demo problem is fastest on one",
    )
    demo.add_argument("--out", default="lsr_demo_out", help="output directory")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=run_demo)

    info = sub.add_parser("info", help="print versions and which kernel paths are active")
    info.set_defaults(func=lambda a: __import__("lsr_scale").show_config())

    from .problems._reproduce import add_reproduce_parser

    add_reproduce_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
