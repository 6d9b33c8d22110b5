"""The figures of ``lsr-scale reproduce`` and ``bench/reproduce_all.py``: one per workload.

matplotlib is optional (the ``plot`` extra): it is imported only when a figure is drawn, and
:func:`plot_workload` returns ``None`` without it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

__all__ = ["plot_workload", "plot_poisson_curves"]

_CURVES = (
    ("iterative_lsr", "Iterative LSR: LSR predictor", "s-"),
    ("iterative", "Iterative LSR: aligned network", "o-"),
    ("lbfgs", "L-BFGS alone (same start, same resampling)", "-"),
)


def _pyplot():
    try:  # optional dependency (the plot extra)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed: no figure (pip install 'lsr_scale[plot]')",
            file=sys.stderr,
        )
        return None
    return plt


def _device_label(rows: list[dict]) -> str:
    return str(rows[0].get("device", "cpu")).upper() if rows else "CPU"


def plot_workload(rows: list[dict], path, *, curves: dict | None = None) -> Path | None:
    """Draw a workload's rows (the bars) beside the paper's numbers; for poisson with
    ``curves``, add the error-against-wall-time panel. Returns the path, or ``None`` when
    matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workload = rows[0].get("workload", path.stem)
    device = _device_label(rows)
    ncol = 2 if curves else 1
    fig, axes = plt.subplots(1, ncol, figsize=(5.5 * ncol, 3.8), squeeze=False)
    ax = axes[0, 0]
    names = [r["method"] for r in rows]
    ax.bar(names, [r["rel_l2"] for r in rows], color="tab:blue", label=f"measured ({device})")
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
    ax.set_title(textwrap.fill(f"{workload}: {rows[0].get('case', '')}", 60), fontsize=7)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend(fontsize=8)
    if curves:
        ax = axes[0, 1]
        _draw_curves(ax, curves, device)
        ax.set_title("Poisson: error vs wall time at equal budget", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_curves(ax, curves: dict, device: str) -> None:
    for key, label, style in _CURVES:
        if curves.get(key):
            t, e = zip(*curves[key])
            ax.plot(t, e, style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(f"wall time (s, {device})")
    ax.set_ylabel("relative L2 test error")
    ax.legend(fontsize=8)


def plot_poisson_curves(curves: dict, path, *, title: str, xlabel: str) -> Path | None:
    """Relative L2 against wall time: Iterative LSR (predictor and network) and L-BFGS."""
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.8, 4.0))
    _draw_curves(ax, curves, "")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
