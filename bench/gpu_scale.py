"""The scale sweep on one GPU: up to 5e7 parameters, with the CUDA kernels on and off.

Targets (issue 10, item 4): 5e7 parameters refined within 80 GB, and an unpreconditioned
LSMR iteration at most 1.10x one JVP + one VJP at m >= 1e6, n >= 1e4. Per configuration
it runs ``bench/bench_scale.py``'s measurement (``refine(method=ls.Krylov())`` with its
defaults, as planned for the GPU's memory: peak memory against the plan, what the plan
adapted, build share, loss reduction) and times 20 unpreconditioned LSMR iterations
against one JVP + one VJP, each with the kernels on and inside ``lsr_scale.cuda.disabled()``.
Each configuration runs in a fresh process; results go to
``bench/results/scale_gpu.json`` as they come (a rerun skips recorded ones), and the table
is printed last.

    python bench/gpu_scale.py             # on a GPU machine
    python bench/gpu_scale.py --dry-run   # tiny sizes on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale as bs  # noqa: E402

OUT = Path(__file__).parent / "results" / "scale_gpu.json"
# (model, size knob, rows, maxiter): maxiter None is the default Krylov() (issue 16: the
# scale points run with the default method; the plan fits them to the GPU's memory)
RUNS = [
    ("mlp", 1000, 10_000, None),
    ("mlp", 3162, 10_000, None),
    ("mlp", 7071, 10_000, None),
    ("deeponet", 2200, 10_000, None),
    ("deeponet", 4950, 10_000, None),
    ("transformer", 1100, 10_000, None),
    ("transformer", 2500, 10_000, None),
]
DRY = [("mlp", 16, 200, 3), ("deeponet", 16, 200, 3), ("transformer", 16, 100, 3)]


def lsmr_ratio(run, device, iters=20) -> dict:
    """Seconds per unpreconditioned LSMR iteration over one JVP + one VJP (float32)."""
    import torch

    import lsr_scale as ls

    model, inputs, targets = bs.make(*run[:3], device=device)
    J = ls.JacobianOperator.from_module(model, inputs, targets, check=False, batch_size=64)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    v = torch.randn(J.shape[1], device=device)
    u = torch.randn(J.shape[0], device=device)
    J.matvec(v), J.rmatvec(u)
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        J.matvec(v), J.rmatvec(u)
    sync()
    pair = (time.perf_counter() - t0) / 3
    b = -J.residual
    ls.lsmr(J, b, maxiter=2)
    sync()
    t0 = time.perf_counter()
    res = ls.lsmr(J, b, maxiter=iters, atol=0.0, btol=0.0, conlim=float("inf"))
    sync()
    per = (time.perf_counter() - t0) / max(res.itn, 1)
    return {"t_pair_f32": pair, "t_lsmr_iter": per, "lsmr_over_pair": per / pair}


def one(run, device, kernels) -> dict:
    import torch

    import lsr_scale as ls

    torch.set_num_threads(1) if device == "cpu" else None
    res = bs.one(run, device=device, kernels=kernels)
    ctx = ls.cuda.disabled() if not kernels else bs._null()
    with ctx:
        res.update(lsmr_ratio(run, device))
    if device != "cpu":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return res


def table(rows) -> str:
    out = [
        "| model | m | n | kernels | peak added (GB) | planned (GB) | adapted | "
        "iter/(JVP+VJP) refine | LSMR iter/(JVP+VJP) | build share | loss after/before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['key']} | | | | | | | | | | {r['error'][:60]!r} |")
            continue
        out.append(
            f"| {r['model']} | {r['m']:.2e} | {r['n']:,} | {'on' if r['kernels'] else 'off'} | "
            f"{r['peak_added'] / 1e9:.2f} | {r.get('planned', 0) / 1e9:.2f} | "
            f"{len(r.get('adapted') or [])} | {r['iter_over_pair']:.2f} | "
            f"{r['lsmr_over_pair']:.2f} | {r['build_share']:.2f} | {r['loss_ratio']:.3f} |"
        )
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if args.one:
        run, kernels = json.loads(args.one)
        print(json.dumps(one(tuple(run), device, kernels)), flush=True)
        return
    import subprocess

    out = Path(args.out) if args.out else (OUT.with_name("scale_gpu_dry.json") if args.dry_run
                                            else OUT)  # fmt: skip
    data = bs.load(out)
    rows = []
    for run in DRY if args.dry_run else RUNS:
        for kernels in (True, False):
            k = f"{bs.key(run)}-k{int(kernels)}"
            if k not in data["runs"]:
                cmd = [sys.executable, __file__, "--one", json.dumps([list(run), kernels])]
                cmd += ["--dry-run"] if args.dry_run else []
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit)
                    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                    res = json.loads(lines[-1]) if lines else {"error": p.stderr[-2000:]}
                except subprocess.TimeoutExpired:
                    res = {"error": f"over the {args.limit} s limit"}
                res["key"] = k
                data["runs"][k] = res
                out.parent.mkdir(parents=True, exist_ok=True)
                bs.save(out, data)
            rows.append(data["runs"][k])
    print(table(rows))


if __name__ == "__main__":
    main()
