"""Burgers DeepONet: three spectral filters of one linearized problem, in one figure.

    python bench/burgers_filters.py [--baseline viscid_tanh] [--iters 3000]
    python bench/burgers_filters.py --figure       # docs/img/burgers_filters.png only

Truncation rank (one-shot subspace LSR), iteration count (Krylov) and Tikhonov ``damp`` all
filter the singular values of the same problem ``min ||G0 delta + f0||``. This script puts
them on one axis. It uses the operator of ``bench/burgers_rank_curve.py`` (float64
products, the same random half of the parameters, the same seed) and reads that script's
rows for the truncation curve and its spectrum estimate (the diagonal of ``R_B``) for the
damp axis, so run that first:

- **iterations**: plain LSMR, no preconditioner, the test error every ``--every`` steps: its
  ``j``-th iterate lies in a ``j``-dimensional Krylov space, the effective rank is ``j``;
- **damp**: ``damp = sigma_k`` (the estimate) for several ``k``, solved to convergence by
  Nystrom-preconditioned LSMR; the effective rank is ``sum_i s_i^2 / (s_i^2 + damp^2)``
  over the estimated spectrum ``s``;
- **preconditioned Krylov** (what ``refine`` runs): its path against the linearized
  training loss, the common axis of the second panel.

Rows go to ``docs/results/burgers_filters.json`` as they exist (a rerun skips what is there).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from burgers_rank_curve import BASELINES, errors, run_tag, setup  # bench/ is on sys.path when run

import lsr_scale as ls

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "docs" / "results" / "burgers_filters.json"
CURVE = ROOT / "docs" / "results" / "burgers_curve.json"
FIG = ROOT / "docs" / "img" / "burgers_filters.png"
DAMP_RANKS = [250, 500, 1000, 2000, 3000, 4000, 6000, 8000]


def load(path):
    return json.loads(path.read_text()) if path.exists() else {}


def save(key, value):
    data = load(JSON)
    data[key] = value
    JSON.parent.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(data, indent=1) + "\n")


def run(baseline: str, kmax: int, fraction: float, seed: int, iters: int, every: int) -> None:
    torch.set_num_threads(1)
    S = setup(baseline, fraction, chunk=1000, seed=seed)  # the curve run's operators and mask
    name, dataset, prob = S.name, S.dataset, S.prob
    J, g, b, q0, Jm, Jtm = S.J, S.g, S.b, S.q0, S.Jm, S.Jtm
    n, m = J.shape
    tag = run_tag(baseline, kmax, fraction, seed, "streamed")
    spec = load(ROOT / "docs" / "results" / f"burgers_spectrum_{tag}.json")
    if not spec:
        raise SystemExit(f"run bench/burgers_rank_curve.py for {tag} first (its spectrum)")
    s_est = torch.tensor(spec["r_diag"], dtype=torch.float64)
    done = load(JSON)
    common = dict(baseline=name, dataset=dataset, fraction=fraction, seed=seed, n=n, m=m,
                  m_refined=Jm.shape[1])  # fmt: skip

    def point(x):
        pred = q0 + Jtm.matvec(x).reshape(prob.n_test, -1)
        agg, mean = errors(pred, prob.s_test)
        res = Jm.matvec(x) - b
        return dict(rel_l2=agg, mean_rel_l2=mean, train_loss=float(res @ res) / n)

    if "iterations" not in done:
        path, state = [], {"itn": 0}
        t0 = time.perf_counter()

        def cb(x):
            state["itn"] += 1
            if state["itn"] % every == 0:
                path.append(dict(iterations=state["itn"], **point(x)))
                print(f"plain LSMR {path[-1]}", flush=True)

        r = ls.lsmr(Jm, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=iters, callback=cb)
        save("iterations", dict(path=path, wall_s=time.perf_counter() - t0, itn=r.itn,
                                preconditioner=None, **common))  # fmt: skip
    if "damp" not in done or "krylov_path" not in done:
        t0 = time.perf_counter()
        lam0 = float(s_est[DAMP_RANKS[0] - 1])
        M = ls.precond.Nystrom(rank=1000).build(Jm, damp=lam0, generator=g)
        build_s = time.perf_counter() - t0
    if "damp" not in done:
        rows = []
        for k in DAMP_RANKS:
            if k > s_est.numel():
                continue
            lam = float(s_est[k - 1])
            M.set_damp(lam)
            t1 = time.perf_counter()
            r = ls.lsmr(Jm, b, damp=lam, M=M, atol=1e-10, btol=1e-10, maxiter=2000)
            phi = s_est**2 / (s_est**2 + lam**2)
            rows.append(
                dict(
                    k=k,
                    damp=lam,
                    effective_rank=float(phi.sum()),
                    itn=r.itn,
                    istop=r.istop,
                    wall_s=time.perf_counter() - t1,
                    **point(r.x),
                )
            )
            print(f"damp {rows[-1]}", flush=True)
        save("damp", dict(rows=rows, nystrom_rank=1000, build_s=build_s, **common))
    if "krylov_path" not in done:
        M.set_damp(0.0)
        path, state = [], {"itn": 0}

        def cbk(x):
            state["itn"] += 1
            if state["itn"] % 5 == 0:
                path.append(dict(iterations=state["itn"], **point(x)))

        t1 = time.perf_counter()
        ls.lsmr(Jm, b, M=M, atol=0.0, btol=0.0, conlim=math.inf, maxiter=300, callback=cbk)
        save("krylov_path", dict(path=path, nystrom_rank=1000, wall_s=time.perf_counter() - t1,
                                 **common))  # fmt: skip


def figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load(JSON)
    baseline = data.get("damp", {}).get("baseline")
    rows = [r for r in (json.loads(CURVE.read_text()) if CURVE.exists() else [])
            if r["baseline"] == baseline]  # fmt: skip
    trained = [r for r in rows if r["method"] == "trained"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    # (points, effective-rank key or None, style, label): each drawn against both axes
    series = [
        (sorted((r for r in rows if r["method"] != "trained"), key=lambda r: r["rank"]),
         "rank", "-o", "truncation (k)"),
        (data.get("iterations", {}).get("path", []), "iterations", "-", "LSMR iterations (j)"),
        (data.get("damp", {}).get("rows", []), "effective_rank", "-s",
         "Tikhonov damp = σ_k (Σ s²/(s²+damp²))"),
        (data.get("krylov_path", {}).get("path", []), None, ":",
         "Nystrom-preconditioned LSMR (rank 1000)"),
    ]  # fmt: skip
    for pts, xkey, style, label in series:
        if not pts:
            continue
        err = [p["mean_rel_l2"] for p in pts]
        if xkey is not None:
            a1.plot([p[xkey] for p in pts], err, style, label=label)
        a2.plot([p["train_loss"] for p in pts], err, style, label=label)
    for a in (a1, a2):
        if trained:
            a.axhline(trained[0]["mean_rel_l2"], color="gray", lw=0.8, label="trained")
        a.set_yscale("log")
        a.set_ylabel("test error (mean per-function rel. L2)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    a1.set_xlabel("effective rank")
    a2.set_xlabel("linearized training MSE")
    a2.set_xscale("log")
    a2.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    a2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a2.invert_xaxis()
    fig.suptitle("Burgers DeepONet (viscid data, p=0.5): three filters of one linearized problem")
    fig.tight_layout()
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", choices=sorted(BASELINES), default="viscid_tanh")
    ap.add_argument("--kmax", type=int, default=9000, help="the curve run whose spectrum to read")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--figure", action="store_true")
    a = ap.parse_args()
    if not a.figure:
        run(a.baseline, a.kmax, a.fraction, a.seed, a.iters, a.every)
    figure()


if __name__ == "__main__":
    main()
