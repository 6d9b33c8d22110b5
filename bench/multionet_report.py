"""MultiONet on the viscid Burgers data: tables and figure from ``docs/results/multionet.json``.

    python bench/multionet_report.py

The rows come from two runs (each resumable, each row written as soon as it exists):

    python bench/train_burgers_authors.py tanh --dataset viscid --weight-decay 0 --arch multionet
    python bench/burgers_rank_curve.py --baseline viscid_multionet_tanh --kmax 14000
    python bench/burgers_krylov.py --baseline viscid_multionet_tanh --threads 1 \\
        --configs defaults maxiter1000 nys1000 nys2000 nys4000

This script writes ``bench/results/multionet_cpu.md`` (quoted by ``docs/results.md``) and
``docs/img/multionet_curve.png`` (our curve beside the authors' log).
"""

from __future__ import annotations

import json
from pathlib import Path

from burgers_rank_curve import (  # bench/ is on sys.path when run
    MULTIONET_JSON,
    PAPER_MULTIONET,
    PAPER_MULTIONET_MEM,
    PAPER_MULTIONET_TIME,
)

from lsr_scale.bench._harness import md_table

ROOT = Path(__file__).resolve().parents[1]
MD = ROOT / "bench" / "results" / "multionet_cpu.md"
FIG = ROOT / "docs" / "img" / "multionet_curve.png"
SPECTRUM = ROOT / "docs" / "results" / "burgers_spectrum_viscid_multionet_tanh_k14000_p1_s0.json"
GIB = 2**30
KRYLOV_BUDGET = 4 * GIB


BASE = "burgers_viscid_authors_tanh_multionet"  # the authors' recipe, 2,000 epochs
LONG = BASE + "_8k"  # the same recipe stretched to 8,000 epochs (halving every 2,000)
MORE = BASE + "_n4000"  # the same recipe on 4,000 training functions (test: the next 50)
BASELINE_LABELS = {BASE: "2,000 epochs", LONG: "8,000 epochs", MORE: "4,000 functions"}
CONFIGS = {  # config -> what it is (bench/burgers_krylov.py CONFIGS)
    "defaults": "Krylov()",
    "maxiter1000": "Krylov(maxiter=1000)",
    "nys1000": "Krylov(Nystrom(rank=1000), maxiter=1000)",
    "nys2000": "Krylov(Nystrom(rank=2000), maxiter=1000)",
}


def _rows():
    rows = json.loads(MULTIONET_JSON.read_text())
    trained = next(r for r in rows if r["method"] == "trained" and r["baseline"] == BASE)
    curve = sorted((r for r in rows if r["method"] == "subspace_streamed"), key=lambda r: r["rank"])
    krylov = [r for r in rows if r["method"] == "krylov"]
    order = list(CONFIGS)
    bases = list(BASELINE_LABELS)
    krylov.sort(key=lambda r: (bases.index(r["baseline"]), order.index(r["config"])))
    return trained, curve, krylov


def _gib(b):
    return None if b is None else f"{b / GIB:.2f} GiB"


def _s_train_norm() -> float:
    """||s_train|| of the viscid data (to turn the curve's linearized MSE into a rel. L2)."""
    import torch

    from lsr_scale.problems._burgers import BurgersProblem

    return float(BurgersProblem(dataset="viscid", dtype=torch.float64).s_train.norm())


def _with_train_errors():
    trained, curve, krylov = _rows()
    s_norm = _s_train_norm()
    for r in curve:  # the linearized training error as a relative L2, like the test column
        r["train_rel_l2"] = (r["train_loss"] * r["n"]) ** 0.5 / s_norm
    return trained, curve, krylov


def report(trained, curve, krylov) -> str:
    t = trained["mean_rel_l2"]
    spectrum = json.loads(SPECTRUM.read_text())["r_diag"]
    ks = [r for r in curve if r["rank"] % 1000 == 0 or r["rank"] in (250, 500, 1500, 2500)]
    curve_cols = [
        ("rank", "k"),
        ("mean_rel_l2:.3e", "test mean rel. L2"),
        (lambda r: f"{t / r['mean_rel_l2']:.2f}x", "gain"),
        ("train_rel_l2:.2e", "train rel. L2"),
        (lambda r: f"{spectrum[r['rank'] - 1] / spectrum[0]:.1e}", "sigma_k/sigma_1"),
        (lambda r: PAPER_MULTIONET.get(r["rank"]), "authors"),
        (lambda r: _ratio(PAPER_MULTIONET["trained"], PAPER_MULTIONET.get(r["rank"])),
         "authors' gain"),
        (lambda r: _gib_or(PAPER_MULTIONET_MEM.get(r["rank"])), "authors' GPU mem"),
    ]  # fmt: skip
    best_c = min(curve, key=lambda r: r["mean_rel_l2"]) if curve else None
    kry_cols = [
        (lambda r: BASELINE_LABELS[r["baseline"]], "baseline"),
        (lambda r: CONFIGS[r["config"]], "method (validation=)"),
        ("iterations", "iterations"),
        ("rank", "precond. rank"),
        (lambda r: f"{r['trained_mean_rel_l2']:.3e}", "trained test"),
        ("mean_rel_l2:.3e", "refined test"),
        (lambda r: f"{r['trained_mean_rel_l2'] / r['mean_rel_l2']:.2f}x", "gain"),
        (lambda r: _train(r), "train rel. L2, trained -> refined"),
        ("wall_s:.0f", "wall (s)"),
        (lambda r: _gib(r["peak_mem_bytes"]), "peak RSS"),
        (lambda r: r["stop"].split(" (best")[0], "stop"),
    ]
    within = [r for r in krylov if r["peak_mem_bytes"] <= KRYLOV_BUDGET and r["baseline"] == BASE]
    best_k = min(within, key=lambda r: r["mean_rel_l2"]) if within else None
    c0 = curve[0] if curve else {}
    lines = [
        "# MultiONet, viscid Burgers (cpu, 1 thread; torch "
        f"{trained.get('torch', '2.13.0+cpu')})",
        "",
        "Command: `python bench/multionet_report.py` (rows: see its docstring)",
        "",
        f"Trained baseline ({trained['train_meta']['recipe']}, {trained['train_meta']['epochs']} "
        f"epochs, {trained['train_meta']['train_wall_s']:.0f} s): test mean rel. L2 "
        f"{t:.3e} (aggregate {trained['rel_l2']:.3e}); the authors' trained MultiONet "
        f"{PAPER_MULTIONET['trained']:.3g}. {c0.get('m', '?')} parameters, all refined (p = 1), "
        f"{c0.get('n', '?')} training rows, 50 test functions. Its training error "
        f"(aggregate rel. L2) is {trained['train_meta']['train_rel_l2']:.2e}.",
        "",
        "## The truncation curve (streamed subspace route, float64 products, float32 basis)",
        "",
        md_table(curve_cols, ks),
        f"One streamed run gives every k up to {c0.get('kmax')}: wall {c0.get('wall_s', 0):.0f} s "
        f"on one thread, peak RSS {_gib(c0.get('peak_mem_bytes'))} "
        f"(the authors: {PAPER_MULTIONET_TIME[14000]:.0f} s and "
        f"{PAPER_MULTIONET_MEM[14000] / 1e9:.1f} GB on one GPU at k = 14,000). "
        "`sigma_k/sigma_1` is the streamed sketch's estimate (the diagonal of R_B).",
        "",
        "## Krylov LSR on the float32 model (validation: 100 held-out functions, seed 12345)",
        "",
        md_table(kry_cols, krylov),
        "## Targets",
        "",
    ]  # fmt: skip
    if best_k and best_c:
        g = t / best_k["mean_rel_l2"]
        lines.append(
            f"- Krylov within 4 GiB: best `{best_k['config']}` at {g:.1f}x "
            f"({_gib(best_k['peak_mem_bytes'])}); target 30x: "
            f"{'**met**' if g >= 30 else '**not met**'}."
        )
        gc = t / best_c["mean_rel_l2"]
        lines.append(
            f"- Best truncation on the same baseline: k = {best_c['rank']} at {gc:.2f}x; Krylov "
            f"{'reaches' if g >= gc else '**does not reach**'} it."
        )
    MD.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def _train(r):
    if r.get("train_rel_l2") is None:
        return None
    return f"{r['trained_train_rel_l2']:.2e} -> {r['train_rel_l2']:.2e}"


def _ratio(a, b):
    return None if b is None else f"{a / b:.1f}x"


def _gib_or(b):
    return None if b is None else f"{b / 1e9:.1f} GB"


def figure(trained, curve, krylov) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = trained["mean_rel_l2"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pk = sorted(k for k in PAPER_MULTIONET if k != "trained")
    ax.plot([0] + pk, [PAPER_MULTIONET["trained"]] + [PAPER_MULTIONET[k] for k in pk], "k--o",
            label="authors' log (GPU, float32 dense)")  # fmt: skip
    ax.plot([0] + [r["rank"] for r in curve], [t] + [r["mean_rel_l2"] for r in curve], "-o",
            ms=3, label="ours: test error, streamed subspace")  # fmt: skip
    ax.plot([0] + [r["rank"] for r in curve],
            [trained["train_meta"]["train_rel_l2"]] + [r["train_rel_l2"] for r in curve],
            ":", color="C0", label="ours: training error (aggregate rel. L2)")  # fmt: skip
    krylov = [r for r in krylov if r["baseline"] == BASE]
    if krylov:
        best = min(krylov, key=lambda r: r["mean_rel_l2"])
        lab = f"ours: {CONFIGS[best['config']]}, {_gib(best['peak_mem_bytes'])}"
        ax.axhline(best["mean_rel_l2"], lw=1.0, ls="-.", color="C1", label=lab)
    ax.set_xlabel("subspace rank k (0: the trained network)")
    ax.set_ylabel("relative L2 error (test: mean per function)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MultiONet on viscid Burgers: LSR against k", fontsize=10)
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIG, dpi=120)


if __name__ == "__main__":
    rows = _with_train_errors()
    print(report(*rows))
    figure(*rows)
