"""Run the full (non-quick) reproductions and write docs/results/*.json and docs/img/*.png.

    python bench/reproduce_all.py burgers antiderivative poisson function [--threads 1]
    python bench/reproduce_all.py --plot-only

Each workload's rows go to docs/results/<workload>.json (the Poisson error-vs-wall-time
curves to docs/results/poisson_curves.json); --plot-only redraws the figures from them.
Run one workload per command with --threads 1 on a shared 2-core CPU (two torch threads per
process oversubscribe the cores and run many times slower).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from lsr_scale.cli import run_reproduce

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "docs" / "results"
IMG = ROOT / "docs" / "img"


def plot(workload: str) -> None:
    # matplotlib is optional (the plot extra): imported only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RES / f"{workload}.json").read_text())
    IMG.mkdir(parents=True, exist_ok=True)
    curves_path = RES / "poisson_curves.json"
    ncol = 2 if workload == "poisson" and curves_path.exists() else 1
    fig, axes = plt.subplots(1, ncol, figsize=(5.5 * ncol, 3.8), squeeze=False)
    ax = axes[0, 0]
    names = [r["method"] for r in rows]
    ax.bar(names, [r["rel_l2"] for r in rows], color="tab:blue", label="measured (CPU)")
    papers = [(i, r["paper"]) for i, r in enumerate(rows) if r.get("paper")]
    if papers:
        ax.scatter(
            [i for i, _ in papers],
            [p for _, p in papers],
            color="tab:red",
            marker="_",
            s=600,
            linewidths=3,
            label="paper (one-shot LSR for refined rows)",
            zorder=3,
        )
    ax.set_yscale("log")
    ax.set_ylabel("relative L2 test error")
    ax.set_title(textwrap.fill(f"{workload}: {rows[0]['case']}", 60), fontsize=7)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend(fontsize=8)
    if ncol == 2:
        c = json.loads(curves_path.read_text())
        ax = axes[0, 1]
        for key, label in (
            ("iterative", "Iterative LSR (network)"),
            ("iterative_lsr", "Iterative LSR (LSR predictor)"),
            ("lbfgs", "L-BFGS alone"),
        ):
            if key in c:
                t, e = zip(*c[key])
                ax.plot(t, e, "o-" if key != "lbfgs" else "-", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s, CPU)")
        ax.set_ylabel("relative L2 test error")
        ax.set_title("Poisson: error vs wall time at equal budget", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / f"{workload}.png", dpi=110)
    plt.close(fig)
    if ncol == 2:
        plot_poisson_curves(json.loads(curves_path.read_text()))


def plot_poisson_curves(c: dict) -> None:
    """docs/img/poisson_iterative.png: relative L2 vs wall time, Iterative LSR vs L-BFGS."""
    import matplotlib.pyplot as plt  # optional dependency, as in plot()

    fig, ax = plt.subplots(figsize=(5.8, 4.0))
    for key, label, style in (
        ("iterative_lsr", "Iterative LSR: LSR predictor", "s-"),
        ("iterative", "Iterative LSR: aligned network", "o-"),
        ("lbfgs", "L-BFGS alone (same start, same resampling)", "-"),
    ):
        if key in c:
            t, e = zip(*c[key])
            ax.plot(t, e, style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s), 2-core CPU, one torch thread, evaluation not timed")
    ax.set_ylabel("relative L2 test error")
    ax.set_title("Poisson PINN (CPU-scaled: [2, 64x4, 1], 2,000 + 400 points)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "poisson_iterative.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workloads", nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    RES.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        for w in ("function", "burgers", "antiderivative", "poisson"):
            if (RES / f"{w}.json").exists():
                plot(w)
        return
    for w in args.workloads:
        curves: dict = {}
        run_reproduce(
            w,
            json_path=RES / f"{w}.json",
            threads=args.threads,
            progress=False,
            curves=curves if w == "poisson" else None,
        )
        if curves:
            (RES / "poisson_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
        plot(w)


if __name__ == "__main__":
    main()
