"""Strong scaling of a row-sharded Krylov refinement over torch.distributed.

One problem, fixed in size, solved by 1, 2 and 4 processes, each holding an equal block of
the rows: a tanh MLP [2, W, W, 1] (float64) on ``--rows`` rows of sin(3x) cos(2y), and what
``ls.refine(..., method=ls.Krylov(preconditioner=ls.precond.Nystrom(rank=r), damp=d,
maxiter=K, atol=0, btol=0, stall=None), products=ShardedProducts())`` runs on it, one phase
at a time so that each is timed alone: the sharded Jacobian (``ShardedProducts().jacobian``),
the Nystrom build on it, and LSMR for exactly K iterations (conlim off), so every run does
the same work. The damping (default 1e-2) does not change the cost of an iteration; it keeps
the answer well determined, so that the runs can be compared to rounding (undamped, the
Jacobian of this untrained network is so ill-conditioned that merely reordering the rows on
one process moves LSMR's 30th iterate by a few percent). Reported per process count, for the
slowest process:

* ``iter_ms``: wall time of one LSMR iteration (one local JVP and VJP, one all-reduce of
  the m parameters, one all-gather of a scalar);
* ``iter_cpu_ms``: the CPU time of one iteration in that process: the share of the work it
  did, which, unlike the wall time, does not depend on what else the machine runs;
* ``comm_ms``: the collectives of one iteration alone (an all-reduce of m numbers and an
  all-gather of a scalar, timed on their own after the solve);
* ``build_s``: the Nystrom build (r + 10 JVPs and VJPs, a TSQR of the row-sharded sketch);
* ``linearize_s``: the local linearization;
* ``speedup``: ``iter_ms`` of one process over ``iter_ms`` here (efficiency: over P);
* ``rel_delta``: ``||delta_P - delta_1|| / ||delta_1||``: the runs solve the same problem.

On the CPU (gloo, the default) each process runs one torch thread, so P processes need P
cores; on a machine with fewer cores, the larger counts oversubscribe them and the
numbers say so. With ``--backend nccl`` each process takes ``cuda:<rank>`` (one GPU per
process, so at most as many processes as GPUs).

    python bench/bench_distributed.py                   # gloo on the CPU, 1, 2, 4 processes
    python bench/bench_distributed.py --quick           # smoke run (distributed_quick.*)
    python bench/bench_distributed.py --backend nccl --procs 1 2 4 8 --rows 200000 --width 512

Writes ``bench/results/distributed_<cpu|cuda>.json`` and ``.md`` and the figure
``docs/img/distributed_scaling.png`` (``--no-plot`` skips it). The processes rendezvous on
``tcp://127.0.0.1:<free port>`` (this machine only) and are killed if a run exceeds
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "img" / "distributed_scaling.png"


# ------------------------------------------------------------------------------ the problem
def make_problem(args, device):
    """The model and all rows (the same on every process: seeded)."""
    torch.manual_seed(0)
    W = args.width
    net = torch.nn.Sequential(
        torch.nn.Linear(2, W),
        torch.nn.Tanh(),
        torch.nn.Linear(W, W),
        torch.nn.Tanh(),
        torch.nn.Linear(W, 1),
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.rows, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    return net.to(device), x.to(device), y.to(device)


def block(n: int, world: int, rank: int) -> slice:
    """Rows of ``rank``: equal blocks, the first ``n % world`` one row longer."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


# ------------------------------------------------------------------------------ one process
def worker(args) -> None:
    import torch.distributed as dist

    import lsr_scale as ls
    from lsr_scale.distributed import ShardedProducts

    rank, world = args.rank, args.world
    torch.set_num_threads(args.threads)
    if args.backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        args.backend,
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=args.timeout),
    )
    try:
        net, x, y = make_problem(args, device)
        rows = block(args.rows, world, rank)
        # warm-up on this process's first rows alone: the first linearization imports what
        # torch.func needs (seconds), which is not what this measures
        ls.Products().jacobian(net, (x[:16],), y[:16]).matvec(
            torch.zeros(sum(p.numel() for p in net.parameters()), dtype=x.dtype, device=device)
        )

        def timed(fn):
            """``fn()``, its wall time (all processes start together) and this process's CPU
            time."""
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out, time.perf_counter() - w0, time.process_time() - c0

        # what ls.refine(..., method=ls.Krylov(preconditioner=ls.precond.Nystrom(rank=r),
        # damp=d, maxiter=K, atol=0, btol=0, stall=None), products=ShardedProducts()) runs on a
        # float64 model, one phase at a time (conlim off: exactly K iterations)
        J, lin_s, lin_cpu = timed(lambda: ShardedProducts().jacobian(net, (x[rows],), y[rows]))
        b = -J.residual
        gen = torch.Generator().manual_seed(0)  # the same test vectors on every process
        spec = ls.precond.Nystrom(rank=args.precond_rank)
        M, build_s, build_cpu = timed(lambda: spec.build(J, damp=args.damp, generator=gen))
        res, solve_s, solve_cpu = timed(
            lambda: ls.lsmr(
                J,
                b,
                damp=args.damp,
                M=M,
                maxiter=args.maxiter,
                atol=0.0,
                btol=0.0,
                conlim=float("inf"),
            )
        )
        its = res.itn
        loss = 0.5 * float(J.row_norm(J.matvec(res.x) - b) ** 2)
        # the communication of one iteration alone: an all-reduce of the m parameters and an
        # all-gather of one scalar per process
        buf = torch.zeros(J.shape[1], dtype=torch.float64, device=device)
        one = torch.zeros(1, dtype=torch.float64, device=device)
        out1 = torch.zeros(world, dtype=torch.float64, device=device)

        def collectives():
            for _ in range(args.maxiter):
                dist.all_reduce(buf)
                dist.all_gather_into_tensor(out1, one)

        _, comm_s, _ = timed(collectives)
        mine = torch.tensor(
            [solve_s / its, solve_cpu / its, build_s, build_cpu, lin_s, comm_s / args.maxiter],
            dtype=torch.float64,
            device=device,
        )
        slowest = mine.clone()
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if rank == 0:
            out = {
                "procs": world,
                "rows_per_proc": rows.stop - rows.start,
                "iterations": its,
                "iter_s": float(slowest[0]),
                "iter_cpu_s": float(slowest[1]),
                "build_s": float(slowest[2]),
                "build_cpu_s": float(slowest[3]),
                "linearize_s": float(slowest[4]),
                "comm_s": float(slowest[5]),
                "n_rows": J.shape[0],
                "n_params": J.shape[1],
                "loss_linearized": loss,
            }
            torch.save(
                {"summary": out, "delta": res.x.cpu()},
                Path(args.outdir) / f"procs{world}.pt",
            )
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ the launcher
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, world: int, outdir: Path) -> dict:
    """Start ``world`` worker processes (this script), wait, return rank 0's record."""
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        LOCAL_WORLD_SIZE=str(world),
    )
    if args.backend == "gloo":
        env["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback only
    port = free_port()
    common = [
        "--rows",
        str(args.rows),
        "--width",
        str(args.width),
        "--maxiter",
        str(args.maxiter),
        "--precond-rank",
        str(args.precond_rank),
        "--damp",
        str(args.damp),
        "--threads",
        threads,
        "--backend",
        args.backend,
        "--timeout",
        str(args.timeout),
    ]
    procs = []
    for r in range(world):
        cmd = [sys.executable, __file__, "--worker", "--rank", str(r), "--world", str(world)]
        cmd += ["--port", str(port), "--outdir", str(outdir), *common]
        procs.append(
            subprocess.Popen(
                cmd,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=args.timeout)[0])
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{world} processes: no result in {args.timeout} s") from None
    finally:
        for p in procs:  # only the processes started here
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        if p.returncode != 0:
            raise SystemExit(f"{world} processes: rank {r} exited {p.returncode}:\n{logs[r]}")
    return torch.load(outdir / f"procs{world}.pt", weights_only=False)


def machine(args) -> dict:
    info = {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "backend": args.backend,
        "threads_per_process": args.threads,
    }
    if args.backend == "nccl" and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_markdown(path: Path, res: dict) -> None:
    m, p = res["machine"], res["problem"]
    kind = "cpu" if m["backend"] == "gloo" else "cuda"
    lines = [
        f"# Strong scaling of a row-sharded Krylov refinement ({kind}, {m['backend']})",
        "",
        f"Generated by `{res['command']}` on {m['platform']}, {m['cpu_count']} logical CPUs"
        + (f", GPUs: {', '.join(m['gpus'])}" if m.get("gpus") else "")
        + f", torch {m['torch']}, {m['threads_per_process']} thread(s) per process, "
        f"{res['date']}; 1-min load average {res['load_start']:.1f} at start, "
        f"{res['load_end']:.1f} at end.",
        "",
        f"Problem: tanh MLP [2, {p['width']}, {p['width']}, 1], float64, {p['n_params']} "
        f"parameters; {p['rows']} rows split in equal blocks; what `ls.Krylov` runs: LSMR with a "
        f"Nystrom preconditioner of rank {p['precond_rank']}, damp {p['damp']:g}, "
        f"{p['maxiter']} iterations (atol = btol = 0, stall off), the same seed on every "
        "process. Times of the slowest process.",
        "",
        "| processes | rows each | ms / iteration (wall) | CPU ms / iteration | collectives ms "
        "| speedup (wall) | efficiency | build s | linearize s | rel. diff. of delta vs 1 "
        "process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['procs']} | {r['rows_per_proc']} | {1e3 * r['iter_s']:.1f} | "
            f"{1e3 * r['iter_cpu_s']:.1f} | {1e3 * r['comm_s']:.1f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.2f} | {r['build_s']:.2f} | {r['linearize_s']:.2f} | "
            f"{r['rel_delta']:.1e} |"
        )
    lines += ["", res["caveat"], ""]
    path.write_text("\n".join(lines))


def plot(path: Path, res: dict) -> None:
    import matplotlib  # lazy: only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    P = [r["procs"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(P, [1e3 * r["iter_s"] for r in runs], "o-", label="wall")
    ax1.plot(P, [1e3 * r["iter_cpu_s"] for r in runs], "s-", label="CPU (slowest process)")
    ax1.plot(P, [1e3 * r["comm_s"] for r in runs], "^-", label="collectives alone")
    ax1.plot(P, [1e3 * runs[0]["iter_s"] / q for q in P], "k--", lw=1, label="ideal (wall)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xticks(P, [str(q) for q in P])
    ax1.set_xlabel("processes")
    ax1.set_ylabel("ms per LSMR iteration")
    ax1.legend(fontsize=7)
    ax2.plot(P, [r["speedup"] for r in runs], "o-", label="iteration (wall)")
    ax2.plot(
        P, [runs[0]["iter_cpu_s"] / r["iter_cpu_s"] for r in runs], "s-", label="iteration (CPU)"
    )
    ax2.plot(P, [runs[0]["build_s"] / r["build_s"] for r in runs], "d-", label="build (wall)")
    ax2.plot(P, P, "k--", lw=1, label="ideal")
    cores = res["machine"]["cpu_count"]
    over = [q for q in P if cores and q > cores]
    if res["machine"]["backend"] == "gloo" and over:
        lo = (max(q for q in P if q <= cores) * over[0]) ** 0.5 if over[0] != P[0] else P[0]
        for ax in (ax1, ax2):
            ax.axvspan(lo, max(P) * 1.1, color="0.9", zorder=0)
        ax2.text(lo * 1.03, 1.3, f"more processes\nthan {cores} cores", fontsize=8)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(P, [str(q) for q in P])
    ax2.set_xlabel("processes")
    ax2.set_ylabel("speedup over 1 process")
    ax2.legend(fontsize=7)
    p = res["problem"]
    title = (
        f"Row-sharded LSMR, {p['rows']} rows x {p['n_params']} parameters, "
        f"{res['machine']['backend']}"
    )
    if res["machine"]["backend"] == "gloo":
        title += (
            f" on {cores} CPU cores shared with other work (load average "
            f"{res['load_start']:.1f}-{res['load_end']:.1f})"
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rows", type=int, default=16000)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--maxiter", type=int, default=30)
    ap.add_argument("--precond-rank", type=int, default=20)
    ap.add_argument("--damp", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process count")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=None, help="results stem (default distributed_<kind>)")
    ap.add_argument(
        "--replot", action="store_true", help="rewrite the .md and the figure from the .json"
    )
    # the worker side (started by the launcher)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.replot:
        kind = "cpu" if args.backend == "gloo" else "cuda"
        stem = args.out or f"distributed_{kind}"
        res = json.loads((RESULTS / f"{stem}.json").read_text())
        write_markdown(RESULTS / f"{stem}.md", res)
        plot(PLOT if args.out is None else RESULTS / f"{stem}.png", res)
        return
    if args.quick:  # a smoke run: its own results stem, no figure
        args.rows, args.width, args.maxiter = 2000, 32, 10
        args.no_plot = True
        args.out = args.out or "distributed_quick"
    if args.backend == "nccl":
        if not torch.cuda.is_available() or torch.cuda.device_count() < max(args.procs):
            raise SystemExit(
                f"--backend nccl: expected at least {max(args.procs)} CUDA devices (one per "
                f"process), got {torch.cuda.device_count() if torch.cuda.is_available() else 0}"
            )
    import tempfile

    load_start = os.getloadavg()[0]
    runs, deltas = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.procs:
            rec = run(args, world, Path(tmp))
            runs.append(rec["summary"])
            deltas[world] = rec["delta"].double()
            print(
                f"{world} process(es): {1e3 * rec['summary']['iter_s']:.1f} ms/iteration "
                f"({1e3 * rec['summary']['comm_s']:.1f} ms collectives), "
                f"build {rec['summary']['build_s']:.2f} s",
                flush=True,
            )
    base = runs[0]
    for r in runs:
        r["speedup"] = base["iter_s"] / r["iter_s"] * base["procs"]
        r["efficiency"] = r["speedup"] / r["procs"]
        d0 = deltas[base["procs"]]
        r["rel_delta"] = float((deltas[r["procs"]] - d0).norm() / d0.norm())
    info = machine(args)
    cores = info["cpu_count"] or 0
    if args.backend == "gloo":
        caveat = (
            f"**Caveat.** This machine has {cores} logical CPU cores, shared with other work "
            "(see the load averages): with one thread per process, runs with more processes "
            "than cores oversubscribe them, so their times measure the contention, not the "
            "method. The speedups beyond the core count are not a scaling result; "
            "rerun on a machine with at least as many idle cores as processes "
            "(or with `--backend nccl` on several GPUs) for one."
        )
    else:
        caveat = "One GPU per process (NCCL)."
    kind = "cpu" if args.backend == "gloo" else "cuda"
    res = {
        "command": "python bench/bench_distributed.py"
        + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""),
        "date": time.strftime("%Y-%m-%d"),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "machine": info,
        "problem": {
            "rows": args.rows,
            "width": args.width,
            "n_params": base["n_params"],
            "maxiter": args.maxiter,
            "precond_rank": args.precond_rank,
            "damp": args.damp,
        },
        "runs": runs,
        "caveat": caveat,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.out or f"distributed_{kind}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(RESULTS / f"{stem}.md", res)
    if not args.no_plot:
        plot(PLOT if args.out is None else RESULTS / f"{stem}.png", res)
    print(f"wrote {RESULTS / (stem + '.json')} and .md")


if __name__ == "__main__":
    main()
