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
from pathlib import Path

from lsr_scale.cli import run_reproduce
from lsr_scale.cli._plots import plot_poisson_curves, plot_workload

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "docs" / "results"
IMG = ROOT / "docs" / "img"


def plot(workload: str) -> None:
    """docs/img/<workload>.png (and poisson_iterative.png), drawn as `lsr-scale reproduce` draws
    its figure (lsr_scale/cli/_plots.py)."""
    rows = json.loads((RES / f"{workload}.json").read_text())
    curves_path = RES / "poisson_curves.json"
    curves = None
    if workload == "poisson" and curves_path.exists():
        curves = json.loads(curves_path.read_text())
    plot_workload(rows, IMG / f"{workload}.png", curves=curves)
    if curves:
        plot_poisson_curves(
            curves,
            IMG / "poisson_iterative.png",
            title="Poisson PINN (CPU-scaled: [2, 64x4, 1], 2,000 + 400 points)",
            xlabel="wall time (s), 2-core CPU, one torch thread, evaluation not timed",
        )


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
