"""The two Burgers data sets side by side: how many directions their outputs have.

    python bench/burgers_data.py        # about 3 minutes on one CPU thread

Writes ``bench/results/burgers_data_cpu.json`` and ``.md``:
- the numbers of singular values of the 1,000 x 128 training-output matrix above 1e-3,
  1e-5 and 1e-7 of the largest (the periodic nu=0.1 data are nearly rank 3; this is why
  their Jacobian had about one strong direction per training function);
- input std, output rms and the largest output slope;
- for the viscid data, the relative max difference between the 512-point, dt=5e-4 solve and
  a 1,024-point, dt=2.5e-4 one (200 functions).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lsr_scale.problems._burgers import BurgersProblem

OUT = Path(__file__).resolve().parent / "results" / "burgers_data_cpu"


def stats(prob: BurgersProblem) -> dict:
    s = prob.s_train.numpy()
    sv = np.linalg.svd(s, compute_uv=False)
    sv = sv / sv[0]
    y = prob.y[:, 0].numpy()
    return {
        "dataset": prob.dataset,
        "nu": prob.nu,
        "solver_grid": prob.solver_grid,
        "singular_values_above": {f"{t:.0e}": int((sv > t).sum()) for t in (1e-3, 1e-5, 1e-7)},
        "input_std": float(prob.u_train.std()),
        "output_rms": float(np.sqrt((s**2).mean())),
        "max_output_slope": float(np.abs(np.diff(s, axis=1) / np.diff(y)).max()),
    }


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = [stats(BurgersProblem(dataset=d, dtype=torch.float64)) for d in ("periodic", "viscid")]
    kw = dict(dataset="viscid", n_train=200, n_test=0, dtype=torch.float64)
    a = BurgersProblem(**kw).s_train
    b = BurgersProblem(**kw, solver_grid=1024, dt=2.5e-4).s_train
    conv = float((a - b).abs().max() / b.abs().max())
    out = {
        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread",
        "rows": rows,
        "viscid_grid_step_convergence": conv,
        "wall_s": time.perf_counter() - t0,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# Burgers data sets (`python bench/burgers_data.py`)",
        "",
        f"Device: {out['device']}. 1,000 training functions, 128 output points.",
        "",
        "| data set | nu | σ > 1e-3 σ₁ | > 1e-5 | > 1e-7 | input std | output rms | max slope |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["singular_values_above"]
        lines.append(
            f"| {r['dataset']} | {r['nu']:.4f} | {c['1e-03']} | {c['1e-05']} | {c['1e-07']} | "
            f"{r['input_std']:.3f} | {r['output_rms']:.3f} | {r['max_output_slope']:.1f} |"
        )
    lines += [
        "",
        f"Viscid solve, 512 points and dt=5e-4 against 1,024 points and dt=2.5e-4 (200 "
        f"functions): {conv:.1e} relative (max).",
        "",
    ]
    OUT.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
