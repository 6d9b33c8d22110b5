"""LSMR iteration cost against one JVP + one VJP, and refine memory as m grows.

Two measurements, both as ratios taken in one run on one device:

1. ``overhead``: time of one LSMR iteration divided by the time of one JVP followed by one
   VJP (timed together, as LSMR calls them) on the same :class:`~lsr_scale.JacobianOperator`
   (MLPs of ~1e4, 1e5, 1e6 parameters). The ratio to the JVP and VJP timed apart is kept too.
   Per-iteration time is the difference of two runs (``maxiter`` = K2 and K1, tolerances 0)
   divided by K2 - K1, so set-up cost cancels. Target: <= 1.2 on CPU, <= 1.10 on a GPU at
   >= 1e6 parameters.
2. ``memory``: peak memory added by ``refine(method="krylov")`` and ``refine(method=
   "subspace")`` as the parameter count m grows (CPU: peak RSS increment; GPU: peak
   allocated tensor memory).

Runs unchanged on a GPU (``--device cuda``). Writes JSON and a markdown table named for the
device into ``bench/results/``::

    python bench/bench_lsmr_overhead.py               # full (CPU: ~5 min)
    python bench/bench_lsmr_overhead.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import lsr_scale as ls
from lsr_scale._utils import PeakMemory, resolve_device
from lsr_scale.models import MLP

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, reps: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _mlp_for(m_target: int, depth: int = 4) -> tuple:
    """Hidden width w so that [2, w x depth, 1] has about m_target parameters."""
    # m ~ (depth-1) w^2 + (depth + 3) w
    a, b = depth - 1, depth + 3
    w = int((-b + (b * b + 4 * a * m_target) ** 0.5) / (2 * a))
    return (2, *[max(w, 2)] * depth, 1)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def overhead(device, dtype, sizes, rows, k1, k2, reps):
    out = []
    for m_target in sizes:
        widths = _mlp_for(m_target)
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = MLP(widths).to(device=device, dtype=dtype)
        x = (torch.rand(rows, 2, generator=g, dtype=dtype) * 2 - 1).to(device)
        y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
        J = ls.JacobianOperator.from_module(model, x, y)
        n, m = J.shape
        v = torch.randn(m, generator=g, dtype=dtype).to(device)
        u = torch.randn(n, generator=g, dtype=dtype).to(device)
        t_jvp = _median_time(lambda J=J, v=v: J.matvec(v), device, reps)
        t_vjp = _median_time(lambda J=J, u=u: J.rmatvec(u), device, reps)
        # the baseline: one JVP followed by one VJP, timed together as LSMR calls them
        t_pair = _median_time(lambda J=J, v=v, u=u: (J.matvec(v), J.rmatvec(u)), device, reps)
        b = -J.residual

        def run(k, J=J, b=b):
            return ls.lsmr(J, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=k)

        t1 = _median_time(lambda: run(k1), device, max(1, reps // 3))
        t2 = _median_time(lambda: run(k2), device, max(1, reps // 3))
        res = run(k2)
        assert res.itn == k2, f"LSMR stopped early ({res.itn} < {k2}): timing invalid"
        t_iter = (t2 - t1) / (k2 - k1)
        out.append(
            {
                "widths": list(widths),
                "n_rows": n,
                "n_params": m,
                "jvp_ms": 1e3 * t_jvp,
                "vjp_ms": 1e3 * t_vjp,
                "lsmr_iter_ms": 1e3 * t_iter,
                "pair_ms": 1e3 * t_pair,
                "ratio": t_iter / t_pair,
                "ratio_vs_separate": t_iter / (t_jvp + t_vjp),
                "jvp_mode": J.jvp_mode,
                "linearize": bool(getattr(J, "uses_linearize", False)),
            }
        )
        print(
            f"  m={m:>9,}  JVP {1e3 * t_jvp:8.2f} ms  VJP {1e3 * t_vjp:8.2f} ms  "
            f"pair {1e3 * t_pair:8.2f} ms  LSMR iter {1e3 * t_iter:8.2f} ms  "
            f"ratio {out[-1]['ratio']:.3f}",
            flush=True,
        )
    return out


def _memory_child(spec: dict) -> dict:
    """One refine in this (fresh) process; returns the peak memory it added."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    widths = _mlp_for(spec["m_target"])
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MLP(widths).to(device=device, dtype=dtype)
    x = (torch.rand(spec["rows"], 2, generator=g, dtype=dtype) * 2 - 1).to(device)
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    if spec["method"] == "krylov":
        method = ls.Krylov(preconditioner=None, maxiter=spec["krylov_iters"])
    else:
        method = ls.Subspace(rank=spec["rank"], reduced="dense")
    with PeakMemory(device) as pm:
        r = ls.refine(model, data=(x, y), method=method, generator=g, progress_bar=False)
    return {
        "widths": list(widths),
        "n_params": r.info["n_params"],
        "peak_bytes": pm.increment_bytes,
        "time_s": r.info["times"]["total"],
        "peak_kind": pm.kind,
    }


def memory(device, dtype, sizes, rows, rank, krylov_iters, threads=None):
    """Peak memory of each refine, each in a fresh process so earlier runs cannot hide it."""
    out = []
    for m_target in sizes:
        row = {"n_rows": rows}
        for method in ("krylov", "subspace"):
            spec = {
                "device": str(device),
                "dtype": str(dtype).split(".")[-1],
                "m_target": m_target,
                "rows": rows,
                "rank": rank,
                "krylov_iters": krylov_iters,
                "method": method,
                "threads": threads,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(widths=res["widths"], n_params=res["n_params"])
            row[f"{method}_peak_bytes"] = res["peak_bytes"]
            row[f"{method}_time_s"] = res["time_s"]
        row["subspace_over_krylov"] = row["subspace_peak_bytes"] / max(row["krylov_peak_bytes"], 1)
        out.append(row)
        print(
            f"  m={row['n_params']:>9,}  krylov +{row['krylov_peak_bytes'] / 2**20:8.1f} MiB  "
            f"subspace(k={rank}) +{row['subspace_peak_bytes'] / 2**20:8.1f} MiB",
            flush=True,
        )
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(_memory_child(json.loads(argv[1]))))
        return None
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    ap.add_argument(
        "--rows", type=int, default=None, help="residual rows (default 2000 CPU, 16384 GPU)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="output stem (default bench/results/...)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = args.rows or (16384 if device.type == "cuda" else 2000)
    if args.quick:
        sizes, mem_sizes, reps, k1, k2 = [10_000], [10_000], 3, 2, 6
    else:
        sizes = [10_000, 100_000, 1_000_000]
        mem_sizes = [10_000, 50_000, 200_000]
        reps, k1, k2 = 7, 5, 25
        if device.type == "cuda":
            sizes = [10_000, 100_000, 1_000_000, 3_000_000]
    print(f"device: {device_name(device)}; dtype {args.dtype}; rows {rows}")
    print("LSMR iteration / (JVP + VJP):")
    ov = overhead(device, dtype, sizes, rows, k1, k2, reps)
    print("peak memory added by refine:")
    mem = memory(
        device,
        dtype,
        mem_sizes,
        rows,
        rank=min(500, rows // 2),
        krylov_iters=20,
        threads=args.threads,
    )
    result = {
        "device": device_name(device),
        "device_type": device.type,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "rows": rows,
        "quick": args.quick,
        "overhead": ov,
        "memory": mem,
        "command": "python bench/bench_lsmr_overhead.py " + " ".join(argv),
    }
    stem = (
        Path(args.out)
        if args.out
        else RESULTS / (f"lsmr_overhead_{device.type}{'_quick' if args.quick else ''}")
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [
        f"# LSMR overhead and refine memory — {result['device']}",
        "",
        f"dtype {args.dtype}, {rows} residual rows, torch {torch.__version__}. "
        f"Command: `{result['command']}`.",
        "",
        "| params m | JVP (ms) | VJP (ms) | JVP+VJP pair (ms) | LSMR iter (ms) | iter / pair "
        "| iter / (JVP + VJP timed apart) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ov:
        md.append(
            f"| {r['n_params']:,} | {r['jvp_ms']:.2f} | {r['vjp_ms']:.2f} | {r['pair_ms']:.2f} | "
            f"{r['lsmr_iter_ms']:.2f} | {r['ratio']:.3f} | {r['ratio_vs_separate']:.3f} |"
        )
    md += [
        "",
        f"| params m | krylov peak added | subspace (k={min(500, rows // 2)}) peak added | "
        "subspace / krylov |",
        "|---:|---:|---:|---:|",
    ]
    for r in mem:
        md.append(
            f"| {r['n_params']:,} | {r['krylov_peak_bytes'] / 2**20:.1f} MiB | "
            f"{r['subspace_peak_bytes'] / 2**20:.1f} MiB | "
            f"{r['subspace_over_krylov']:.1f}x |"
        )
    md += [
        "",
        "Peak memory is measured in a fresh process per refine (CPU: growth of the peak resident "
        "set; GPU: peak allocated tensor memory). Krylov: 20 unpreconditioned LSMR iterations; "
        "subspace: dense reduced solve.",
    ]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
