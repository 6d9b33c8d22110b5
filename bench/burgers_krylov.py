"""Burgers DeepONet: Krylov LSR on the float32 baseline, as a user would call it.

    python bench/burgers_krylov.py [--baseline viscid_tanh] [--configs defaults maxiter1000 ...]
    python bench/burgers_krylov.py --baseline viscid_multionet_tanh --threads 1 \
        --configs defaults maxiter1000 nys1000 nys2000 nys4000   # docs/results/multionet.json

Every run refines the float32 model through ``refine(view, data=(u, s), method=Krylov(...))``
(the default precision: float64 products on a private copy) on the 1,000 training functions
(128,000 rows). ``validation=`` is 100 held-out functions from another seed, never the test
set. Each row goes to ``docs/results/burgers_krylov.json`` as soon as it exists, with the
whole process's peak resident memory (``VmHWM``, reset before the run), the wall time,
iterations and products; rows already there are skipped, so a rerun resumes.

"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from burgers_rank_curve import (  # bench/ is on sys.path when run
    BASELINES,
    N_TRAIN,
    build_net,
    errors,
    results_json,
)

import lsr_scale as ls
from lsr_scale._utils import PeakMemory
from lsr_scale.problems._burgers import BurgersProblem, DeepONetGrid

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "docs" / "results" / "burgers_krylov.json"
PAPER = {"method": "paper, dense subspace k=9,000 (GPU, float32)", "mean_rel_l2": 2.05e-3,
         "trained": 1.08e-2, "wall_s": 47.0, "peak_mem_bytes": 20.5e9}  # fmt: skip


CONFIGS = {  # name: the method; every run gets validation=
    "defaults": ls.Krylov(),
    "maxiter1000": ls.Krylov(maxiter=1000),
    "nys1000": ls.Krylov(preconditioner=ls.precond.Nystrom(rank=1000), maxiter=1000),
    "nys2000": ls.Krylov(preconditioner=ls.precond.Nystrom(rank=2000), maxiter=1000),
    "nys4000": ls.Krylov(preconditioner=ls.precond.Nystrom(rank=4000), maxiter=2000),
    "plain": ls.Krylov(preconditioner=None, maxiter=6000, check_every=25, patience=8),
}


def load_rows(path: Path = JSON):
    return json.loads(path.read_text()) if path.exists() else []


def save_row(row, path: Path = JSON):
    key = (row["config"], row["baseline"])
    rows = [r for r in load_rows(path) if (r.get("config"), r["baseline"]) != key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows + [row], indent=1) + "\n")


def run(baseline: str, names: list[str]) -> None:
    name, act, dataset = BASELINES[baseline]
    # float32, the data the baseline was trained on (its test set: the 50 functions after them)
    prob = BurgersProblem(dataset=dataset, n_train=N_TRAIN.get(baseline, 1000))
    val = BurgersProblem(dataset=dataset, n_train=1, n_test=100, seed=12345)
    torch.manual_seed(prob.seed)
    net, meta = build_net(baseline)
    out = results_json(baseline)
    view = DeepONetGrid(net, y=prob.y)
    with torch.no_grad():
        trained = errors(view(prob.u_test), prob.s_test)
        trained_train = errors(view(prob.u_train), prob.s_train)
    m = sum(p.numel() for p in net.parameters())
    done = {(r.get("config"), r["baseline"]) for r in load_rows(out)}
    todo = {k: v for k, v in CONFIGS.items() if k in names}
    common = dict(baseline=name, activation=act, dataset=dataset, n=prob.n_train * 128, m=m,
                  model_dtype="float32", trained_rel_l2=trained[0],
                  trained_mean_rel_l2=trained[1], train_meta_wall_s=meta.get("train_wall_s"),
                  threads=torch.get_num_threads(), paper=PAPER)  # fmt: skip
    validation = (val.u_test, val.s_test)
    for cfg, method in todo.items():
        if (cfg, name) in done:
            print(f"{cfg}: recorded, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        with PeakMemory("cpu") as pm:
            r = ls.refine(
                view,
                data=(prob.u_train, prob.s_train),
                method=method,
                validation=validation,
                generator=torch.Generator().manual_seed(0),
                progress_bar=False,
            )
        wall = time.perf_counter() - t0
        with torch.no_grad():
            agg, mean = errors(r(prob.u_test), prob.s_test)
            tr_agg, tr_mean = errors(r(prob.u_train), prob.s_train)
        info = r.info
        solver = info.get("solver")
        row = dict(
            config=cfg,
            method="krylov",
            settings=repr(method),
            rel_l2=agg,
            mean_rel_l2=mean,
            reduction_mean=trained[1] / mean,
            train_rel_l2=tr_agg,
            train_mean_rel_l2=tr_mean,
            trained_train_rel_l2=trained_train[0],
            rank=(info.get("preconditioner") or {}).get("rank"),
            iterations=info.get("iterations"),
            stop=info.get("stop"),
            damp=info.get("damp"),
            precision=info.get("precision"),
            wall_s=wall,
            peak_mem_bytes=pm.peak_bytes,
            peak_kind=pm.kind,
            products={"jvp": info.get("num_jvp"), "vjp": info.get("num_vjp")},
            validation=info.get("validation"),
            validation_set="100 held-out functions, seed 12345",
            solver_istop=getattr(solver, "istop", None),
            quick=False,
            **common,
        )
        save_row(row, out)
        print(
            f"{cfg}: test {agg:.3e} (mean {mean:.3e}, {trained[1] / mean:.2f}x), "
            f"{row['iterations']} it, {wall:.0f} s, peak {pm.peak_bytes / 2**30:.2f} GiB, "
            f"stop {row['stop']}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", choices=sorted(BASELINES), default="viscid_tanh")
    ap.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=["maxiter1000"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run(a.baseline, a.configs)


if __name__ == "__main__":
    main()
