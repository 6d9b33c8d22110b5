"""Does a bigger Nystrom preconditioner pay for its build? (issue 10: adaptive rank)

For the demo MLP (float32 model, Krylov defaults otherwise), refine with preconditioner ranks
0 (none), 25, 50, 100, 200, 300 and record the build's products, the iterations to the stall
rule, all products together, the wall time and the test error. Writes
``bench/results/precond_rank_cpu.json`` and ``.md``.

    python bench/bench_precond_rank.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

import lsr_scale as ls
from lsr_scale.precond import Nystrom
from lsr_scale.problems import FunctionProblem

OUT = Path(__file__).parent / "results" / "precond_rank_cpu"
RANKS = (0, 25, 50, 100, 200, 300)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = FunctionProblem(n_train=2000, seed=0)
    model = prob.make_model()
    prob.train(model, epochs=10000, lr=3e-3, progress=False)
    rows = [{"rank": "trained", "rel_l2": prob.test_error(model)}]
    for r in RANKS:
        pc = None if r == 0 else Nystrom(rank=r)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = ls.refine(
                model,
                data=(prob.x_train, prob.y_train),
                method=ls.Krylov(preconditioner=pc),
                generator=torch.Generator().manual_seed(0),
            )
        p = ref.info["preconditioner"]
        rows.append(
            {
                "rank": r,
                "rel_l2": prob.test_error(ref),
                "iterations": ref.info["iterations"],
                "stop": ref.info["stop"].split(":")[0],
                "build_products": p.get("build_matvecs", 0) + p.get("build_rmatvecs", 0),
                "products": ref.info["num_jvp"] + ref.info["num_vjp"],
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    doc = {"device": f"CPU ({platform.machine()}), {args.threads} thread(s)", "rows": rows}
    OUT.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [
        "# Nystrom rank against iterations (demo MLP, float32 model, Krylov defaults)",
        "",
        f"Device: {doc['device']}. Command: `python bench/bench_precond_rank.py --threads 1`.",
        "",
        "| rank | test rel. L2 | iterations | stopped by | build products | all products "
        "| wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows[1:]:
        lines.append(
            f"| {r['rank']} | {r['rel_l2']:.2e} | {r['iterations']} | {r['stop']} | "
            f"{r['build_products']} | {r['products']} | {r['wall_s']:.1f} |"
        )
    lines.append(f"\nTrained network: {rows[0]['rel_l2']:.2e}.")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
