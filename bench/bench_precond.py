"""Preconditioners on network Jacobians: iterations, JVP+VJP pairs, wall time, memory, test error.

Two trained networks, side by side for every preconditioner in one run:

1. ``mlp``: tanh MLP [2, 32x3, 1] (2,241 parameters) trained with Adam on
   sin(pi x) sin(pi y), 2,000 rows (the demo problem, ``lsr_scale.problems.FunctionProblem``);
2. ``deeponet``: a small tanh DeepONet trained with Adam on the data-driven Burgers operator
   u(x, 0) -> u(x, 1) (``lsr_scale.problems.BurgersProblem``, shrunk to run on a CPU).

For each, the Jacobian G0 of the residual at the trained parameters is a
:class:`~lsr_scale.JacobianOperator` (float32 unless the row says float64), and
``min ||G0 x + f0||`` is solved by LSMR with each right preconditioner. Reported per row:

* ``iters``: LSMR iterations until the linearized loss ``||G0 x + f0||^2``, recomputed from
  the returned x with a dense float64 G0 (never the solver's own estimate), is within 1% of
  that of the best rank-l solution (truncated SVD of the dense float64 G0 on its top l
  singular directions, l = the preconditioner rank);
* ``pairs``: JVP+VJP pairs to get there, the build included ((matvecs + rmatvecs) / 2);
* ``wall_s``: wall time of build + solve (a second, timed run without the loss callback);
* ``peak_mb``: peak memory added by build + solve (``lsr_scale._utils.PeakMemory``);
* ``test_err``: relative L2 test error of the linear predictor ``q(theta0, x) + J_q(x) delta``.

Rows: no preconditioner; Jacobi; Nystrom built from a randomized SVD of G0 (``svd``) and from a
shifted Nystrom sketch of G0^T G0 (``nystrom``), in float32 and float64, and with a bfloat16
basis; sketch-and-precondition, which needs a tall operator, on the reduced operator G0 V_l
(V_l: the randomized-SVD basis, so the row also pays for that SVD).

    python bench/bench_precond.py             # full run (about 4 min on 2 CPU cores)
    python bench/bench_precond.py --quick     # smoke run
    python bench/bench_precond.py --device cuda

Writes ``bench/results/precond_<device>.json`` and ``.md`` and the convergence plot
``docs/img/precond_convergence.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

import lsr_scale as ls
from lsr_scale._utils import PeakMemory, resolve_device
from lsr_scale.operators import SubspaceOperator
from lsr_scale.precond import JacobiPreconditioner, NystromPreconditioner, SketchPreconditioner
from lsr_scale.problems import BurgersProblem, FunctionProblem, rel_l2

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "img" / "precond_convergence.png"


# ------------------------------------------------------------------------------- problems
def mlp_problem(device, quick):
    p = FunctionProblem(device=str(device))
    model = p.make_model()
    p.train(model, epochs=1500 if quick else 3000, progress=False)
    return {
        "name": "mlp",
        "label": "tanh MLP [2,32x3,1], sin(pi x) sin(pi y), Adam",
        "model": model,
        "train": ((p.x_train,), p.y_train),
        "test": ((p.x_test,), p.y_test),
        "rank": 100 if quick else 300,
    }


def deeponet_problem(device, quick):
    p = BurgersProblem(
        n_train=100, n_test=20, n_grid=32, solver_grid=128, width=24, depth=2, device=str(device)
    )
    net = p.make_model()
    p.train(net, epochs=1000 if quick else 3000, lr=3e-3, batch=100, progress=False)

    # Aligned rows (one per function-point pair), as the supervised DeepONet loss has them.
    def aligned(u, y, s):
        B, P = u.shape[0], y.shape[0]
        return (u.repeat_interleave(P, dim=0), y.repeat(B, 1)), s.reshape(B * P, 1)

    train = aligned(p.u_train, p.y, p.s_train)
    test = aligned(p.u_test, p.y, p.s_test)
    return {
        "name": "deeponet",
        "label": "DeepONet branch [32,24,24] trunk [1,24,24], Burgers u0 -> u(t=1), Adam",
        "model": net,
        "train": train,
        "test": test,
        "rank": 100 if quick else 200,
    }


def _cast(t, dtype):
    return t.to(dtype) if t.is_floating_point() else t


# ------------------------------------------------------------------------------- variants
def variants(rank):
    """(label, dtype, builder, iteration cap key). The comparison runs in float64: on these
    networks sigma_l / sigma_1 is below float32's resolution at l = 300 (see the notes), so
    the float32 rows measure the issue's float32 caution rather than compete."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    f64, f32 = torch.float64, torch.float32
    return [
        ("none", f64, None, "plain"),
        ("jacobi", f64, lambda A: JacobiPreconditioner(A), "plain"),
        ("nystrom-svd", f64, lambda A: NystromPreconditioner(A, rank, generator=g()), "pre"),
        (
            "nystrom-nystrom",
            f64,
            lambda A: NystromPreconditioner(A, rank, generator=g(), method="nystrom"),
            "pre",
        ),
        (
            "nystrom-svd bf16 basis",
            f64,
            lambda A: NystromPreconditioner(A, rank, generator=g(), basis_dtype=torch.bfloat16),
            "pre",
        ),
        ("sketch on G0 V_l", f64, "sketch", "pre"),
        ("nystrom-svd", f32, lambda A: NystromPreconditioner(A, rank, generator=g()), "f32"),
        (
            "nystrom-nystrom",
            f32,
            lambda A: NystromPreconditioner(A, rank, generator=g(), method="nystrom"),
            "f32",
        ),
    ]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _curve_points(n: int, dense: int = 100, total: int = 400) -> list[int]:
    """Indices for a convergence curve: every point up to ``dense``, then log-spaced."""
    if n <= total:
        return list(range(n))
    tail = {
        int(round(dense * (n / dense) ** (j / (total - dense)))) - 1
        for j in range(total - dense + 1)
    }
    return sorted(set(range(dense)) | {min(i, n - 1) for i in tail} | {n - 1})


def run_variant(J, b, build, rank, maxiter, loss_of, device, target, record):
    """Build the preconditioner and run LSMR; return (x, iterations, losses, costs)."""
    J.reset_counts()
    losses = []
    stop_at = [None]
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        if build == "sketch":
            _, _, Vh = ls.randomized_svd(
                J, rank, oversample=10, generator=torch.Generator().manual_seed(0)
            )
            V = Vh[:rank].T.contiguous()
            A = SubspaceOperator(J, V)
            M = SketchPreconditioner(A, generator=torch.Generator().manual_seed(0))
            lift = lambda c: V @ c  # noqa: E731
        else:
            A, V = J, None
            M = build(J) if build is not None else None
            lift = lambda c: c  # noqa: E731
        _sync(device)
        build_time = time.perf_counter() - t0
        build_products = J.num_matvecs + J.num_rmatvecs

        def callback(x):
            losses.append(loss_of(lift(x)))
            if stop_at[0] is None and losses[-1] <= target:
                stop_at[0] = len(losses)

        res = ls.lsmr(
            A,
            b,
            atol=0.0,
            btol=0.0,
            conlim=math.inf,
            maxiter=maxiter,
            M=M,
            callback=callback if record else None,
        )
        _sync(device)
        wall = time.perf_counter() - t0
    x = lift(res.x)
    return {
        "x": x,
        "itn": res.itn,
        "losses": losses,
        "stop_at": stop_at[0],
        "build_time": build_time,
        "build_pairs": build_products / 2,
        "pairs": (J.num_matvecs + J.num_rmatvecs) / 2,
        "wall_s": wall,
        "precond_info": M.info() if M is not None else None,
    }


def bench_problem(prob, device, quick):
    model32 = prob["model"]
    model64 = copy.deepcopy(model32).double()
    (xin, y), (xt, yt) = prob["train"], prob["test"]
    rank = prob["rank"]
    ops = {
        torch.float32: ls.JacobianOperator.from_module(model32, xin, y),
        torch.float64: ls.JacobianOperator.from_module(
            model64, tuple(_cast(t, torch.float64) for t in xin), y.double()
        ),
    }
    J64 = ops[torch.float64]
    t0 = time.perf_counter()
    Jd = J64.to_dense()
    b64 = -J64.residual
    U, S, Vh = torch.linalg.svd(Jd, full_matrices=False)
    dense_time = time.perf_counter() - t0

    def loss_of(x):
        return float((Jd @ x.double() - b64).square().sum())

    x_tsvd = Vh[:rank].T @ ((U[:, :rank].T @ b64) / S[:rank])
    loss0 = float(b64.square().sum())
    loss_best = loss_of(x_tsvd)
    target = 1.01 * loss_best

    Jq = ls.JacobianOperator.from_module(model64, tuple(_cast(t, torch.float64) for t in xt))
    yt64 = yt.double().reshape(-1)

    def test_err(x):
        with torch.no_grad():
            return rel_l2(Jq.residual + Jq.matvec(x.double()), yt64)

    out = {
        "problem": prob["label"],
        "rows": int(Jd.shape[0]),
        "params": int(Jd.shape[1]),
        "rank": rank,
        "cond_G0_f64": float(S[0] / S[-1]),
        "sigma": [float(S[0]), float(S[rank - 1]), float(S[-1])],
        "loss_trained": loss0,
        "loss_best_rank": loss_best,
        "loss_full_rank_f64": float(
            (Jd @ torch.linalg.lstsq(Jd, b64[:, None], driver="gelsd").solution[:, 0] - b64)
            .square()
            .sum()
        ),
        "test_err_trained": test_err(torch.zeros(Jd.shape[1], dtype=torch.float64)),
        "test_err_tsvd_rank": test_err(x_tsvd),
        "dense_reference_s": dense_time,
        "results": [],
        "curves": {},
    }
    try:  # one-shot subspace LSR at the same rank, for reference
        t0 = time.perf_counter()
        refined = ls.refine(
            model64,
            data=(
                tuple(_cast(t, torch.float64) for t in xin) if len(xin) > 1 else xin[0].double(),
                y.double(),
            ),
            method=ls.Subspace(rank=rank),
            generator=torch.Generator().manual_seed(0),
            progress_bar=False,
        )
        wall = time.perf_counter() - t0
        delta = refined.delta
        info = refined.info
        pairs = None
        if "num_matvecs" in info and "num_rmatvecs" in info:
            pairs = (info["num_matvecs"] + info["num_rmatvecs"]) / 2
        out["subspace_oneshot"] = {
            "loss": loss_of(delta),
            "test_err": test_err(delta),
            "wall_s": wall,
            "pairs": pairs,
        }
    except Exception as exc:  # pragma: no cover - reference only
        out["subspace_oneshot"] = {"error": f"{type(exc).__name__}: {exc}"}

    caps = {"plain": 600 if quick else 20000, "pre": 200 if quick else 300, "f32": 100}
    for label, dtype, build, cap in variants(rank):
        J = ops[dtype]
        b = -J.residual
        maxiter = caps[cap]
        rec = run_variant(J, b, build, rank, maxiter, loss_of, device, target, record=True)
        iters = rec["stop_at"]
        # Timed run: build + exactly the iterations needed (or the cap), no callback.
        with PeakMemory(device) as pm:
            timed = run_variant(
                J, b, build, rank, iters or maxiter, loss_of, device, target, record=False
            )
        x = timed["x"]
        row = {
            "preconditioner": label,
            "dtype": str(dtype).replace("torch.", ""),
            "reached_target": iters is not None,
            "iters": iters if iters is not None else maxiter,
            "pairs": timed["pairs"],
            "build_pairs": timed["build_pairs"],
            "build_s": timed["build_time"],
            "wall_s": timed["wall_s"],
            "peak_mb": pm.increment_bytes / 2**20,
            "peak_kind": pm.kind,
            "loss_rel_best": loss_of(x) / loss_best,
            "test_err": test_err(x),
            "precond": timed["precond_info"],
        }
        out["results"].append(row)
        keep = _curve_points(len(rec["losses"]))  # the JSON stays small at 20,000 iterations
        out["curves"][f"{label} ({row['dtype']})"] = {
            "pairs": [rec["build_pairs"] + i + 1 for i in keep],
            "rel_residual": [math.sqrt(rec["losses"][i] / loss0) for i in keep],
        }
        mark = "" if iters is not None else " (target not reached)"
        print(
            f"  {prob['name']:8s} {label:24s} {row['dtype']:8s} iters {row['iters']:5d}{mark} "
            f"pairs {row['pairs']:7.0f} wall {row['wall_s']:6.2f}s test {row['test_err']:.2e}",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------- reporting
def summarize(res):
    rows = {(r["preconditioner"], r["dtype"]): r for r in res["results"]}
    none, jac = rows[("none", "float64")], rows[("jacobi", "float64")]
    best = min(
        (
            r
            for r in res["results"]
            if r["reached_target"] and r["preconditioner"] not in ("none", "jacobi")
        ),
        key=lambda r: r["wall_s"],
        default=None,
    )
    if best is None:
        return {"best": None}
    return {
        "best": f"{best['preconditioner']} ({best['dtype']})",
        "iters_ratio_vs_none": none["iters"] / best["iters"],
        "iters_ratio_none_is_lower_bound": not none["reached_target"],
        "wall_ratio_vs_none": none["wall_s"] / best["wall_s"],
        "wall_ratio_none_is_lower_bound": not none["reached_target"],
        "beats_jacobi_iters": best["iters"] < jac["iters"],
        "beats_jacobi_wall": best["wall_s"] < jac["wall_s"],
        "target_10x_iters": none["iters"] / best["iters"] >= 10,
        "target_3x_wall": none["wall_s"] / best["wall_s"] >= 3,
    }


def markdown(report):
    lines = [
        f"# Preconditioners on network Jacobians ({report['device_name']})",
        "",
        f"Generated by `python bench/bench_precond.py{' --quick' if report['quick'] else ''}`"
        f" on {report['device_name']}, torch {report['torch']}, "
        f"{report['threads']} threads, {report['date']}; 1-min load average "
        f"{report['loadavg_start'][0]:.1f} at start, {report['loadavg_end'][0]:.1f} at end "
        f"(total {report['total_s']:.0f} s). Wall times on a shared machine are noisy.",
        "",
        "`iters`: LSMR iterations until the linearized loss ||G0 x + f0||^2, recomputed from "
        "x with a dense float64 G0, is within 1% of the best rank-l (truncated SVD) loss; "
        "`pairs`: JVP+VJP pairs including the build; `wall`: build + solve; `peak`: memory "
        "added by build + solve; `test err`: relative L2 error of the linear predictor.",
        "",
    ]
    for res in report["problems"]:
        s = res["summary"]
        lines += [
            f"## {res['problem']}",
            "",
            f"G0: {res['rows']} rows x {res['params']} parameters, cond (float64) "
            f"{res['cond_G0_f64']:.2e}; rank l = {res['rank']} (sigma_1 = {res['sigma'][0]:.3g},"
            f" sigma_l = {res['sigma'][1]:.3g}, sigma_min = {res['sigma'][2]:.3g}).",
            f"sigma_l / sigma_1 = {res['sigma'][1] / res['sigma'][0]:.2e} (float32 resolves about "
            f"{torch.finfo(torch.float32).eps:.1e}). Linearized loss: trained "
            f"{res['loss_trained']:.3e}, best rank-l {res['loss_best_rank']:.3e}, full rank "
            f"{res['loss_full_rank_f64']:.3e}.",
            f"Test error: trained {res['test_err_trained']:.3e}; best rank-l (dense float64 "
            f"truncated SVD) {res['test_err_tsvd_rank']:.3e}.",
        ]
        one = res.get("subspace_oneshot", {})
        if "test_err" in one:
            lines.append(
                "One-shot subspace LSR "
                f"(`refine(method=ls.Subspace(rank={res['rank']}))`, float64): test error "
                f"{one['test_err']:.3e}, loss/best {one['loss'] / res['loss_best_rank']:.3f}"
                f", {one['wall_s']:.2f} s"
                + (f", {one['pairs']:.0f} pairs" if one.get("pairs") else "")
                + "."
            )
        lines += [
            "",
            "| preconditioner | dtype | iters | pairs (build) | wall s (build) | peak MB "
            "| loss/best | test err |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["results"]:
            it = f"{r['iters']}" if r["reached_target"] else f"> {r['iters']}"
            lines.append(
                f"| {r['preconditioner']} | {r['dtype']} | {it} | {r['pairs']:.0f} "
                f"({r['build_pairs']:.0f}) | {r['wall_s']:.2f} ({r['build_s']:.2f}) | "
                f"{r['peak_mb']:.1f} | {r['loss_rel_best']:.3f} | {r['test_err']:.3e} |"
            )
        if s.get("best"):
            lines += [
                "",
                f"Best (fastest to target): **{s['best']}**: "
                f"{'>= ' if s['iters_ratio_none_is_lower_bound'] else ''}"
                f"{s['iters_ratio_vs_none']:.1f}x fewer iterations and "
                f"{'>= ' if s['wall_ratio_none_is_lower_bound'] else ''}"
                f"{s['wall_ratio_vs_none']:.1f}x less wall time than none "
                f"(targets 10x / 3x: {'met' if s['target_10x_iters'] else 'MISSED'} / "
                f"{'met' if s['target_3x_wall'] else 'MISSED'}); beats Jacobi on iterations: "
                f"{s['beats_jacobi_iters']}, on wall time: {s['beats_jacobi_wall']}.",
            ]
        lines.append("")
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    probs = report["problems"]
    fig, axes = plt.subplots(1, len(probs), figsize=(6.5 * len(probs), 4.5), squeeze=False)
    for ax, res in zip(axes[0], probs):
        for label, c in res["curves"].items():
            if c["pairs"]:
                ax.semilogy(c["pairs"], c["rel_residual"], label=label, lw=1.4)
        best = math.sqrt(res["loss_best_rank"] / res["loss_trained"])
        ax.axhline(best, color="k", ls="--", lw=0.8, label=f"best rank-{res['rank']} (f64)")
        ax.set_xscale("log")
        ax.set_xlabel("JVP+VJP pairs (build included)")
        ax.set_ylabel("||G0 x + f0|| / ||f0||")
        ax.set_title(f"{res['name']}: {res['rows']} x {res['params']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (smoke test)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()})"
    )
    tag = "cuda" if device.type == "cuda" else "cpu"
    report = {
        "device": tag,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_start": list(os.getloadavg()),
        "problems": [],
    }
    t_all = time.perf_counter()
    for make in (mlp_problem, deeponet_problem):
        t0 = time.perf_counter()
        prob = make(device, args.quick)
        print(f"{prob['name']}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
        res = bench_problem(prob, device, args.quick)
        res["name"] = prob["name"]
        res["summary"] = summarize(res)
        report["problems"].append(res)
    report["total_s"] = time.perf_counter() - t_all
    report["loadavg_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"precond_{tag}{'_quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    if not args.no_plot:
        plot(report, PLOT if not args.quick else PLOT.with_name("precond_convergence_quick.png"))
    print(f"wrote {stem}.json/.md in {report['total_s']:.0f} s")


if __name__ == "__main__":
    main()
