"""Suite ``distributed``: strong scaling of a row-sharded Krylov refinement over
torch.distributed.

One problem, fixed in size, solved by 1, 2 and 4 processes, each holding an equal block of
the rows: a tanh MLP [2, W, W, 1] (float64) on ``--rows`` rows of sin(3x) cos(2y), and what
``ls.refine(..., method=ls.Krylov(preconditioner=ls.precond.Nystrom(rank=r), damp=d,
maxiter=K, atol=0, btol=0, stall=None), products=ShardedProducts())`` runs on it, one phase
at a time so that each is timed alone: the sharded Jacobian (``ShardedProducts().jacobian``),
the Nystrom build on it, and LSMR for exactly K iterations (conlim off), so every run does
the same work. The damping (default 1e-2) does not change the cost of an iteration; it keeps
the answer well determined, so that the runs can be compared to rounding. Reported per
process count, for the slowest process:

* ``iter_s``: wall time of one LSMR iteration (one local JVP and VJP, one all-reduce of the
  m parameters, one all-gather of a scalar); ``iter_cpu_s``: its CPU time in that process
  (the share of the work it did, which does not depend on what else the machine runs);
* ``comm_s``: the collectives of one iteration alone (timed on their own after the solve);
* ``build_s``: the Nystrom build; ``linearize_s``: the local linearization;
* ``speedup``: ``iter_s`` of one process over ``iter_s`` here (``efficiency``: over P);
* ``rel_delta``: ``||delta_P - delta_1|| / ||delta_1||``: the runs solve the same problem.

On the CPU (gloo, the default) each process runs ``--threads`` torch threads, so P processes
need P cores; with ``--backend nccl`` each process takes ``cuda:<rank>``::

    lsr-scale bench distributed                  # gloo on the CPU, 1, 2, 4 processes
    lsr-scale bench distributed --quick          # smoke run (distributed_cpu_quick.*)
    lsr-scale bench distributed --backend nccl --procs 1 2 4 8 --rows 200000 --width 512

Writes ``<out>/distributed_<device>.{json,md}`` and the figure (``docs/img/
distributed_scaling.png`` for a full run into ``bench/results``, else ``<out>/
distributed_<device>.png``). The processes rendezvous on ``tcp://127.0.0.1:<free port>``
and are killed if a run exceeds ``--timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

from ._harness import DEFAULT_OUT, Record, load_info, md_table, suite


def make_problem(spec, device):
    """The model and all rows (the same on every process: seeded)."""
    torch.manual_seed(0)
    W, L, T = spec["width"], torch.nn.Linear, torch.nn.Tanh
    net = torch.nn.Sequential(L(2, W), T(), L(W, W), T(), L(W, 1)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(spec["rows"], 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    return net.to(device), x.to(device), y.to(device)


def block(n: int, world: int, rank: int) -> slice:
    """Rows of ``rank``: equal blocks, the first ``n % world`` one row longer."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def worker(spec: dict) -> None:
    """One process of a run (started by :func:`launch`); rank 0 saves the summary."""
    import torch.distributed as dist

    import lsr_scale as ls
    from lsr_scale.distributed import ShardedProducts

    rank, world = spec["rank"], spec["world"]
    torch.set_num_threads(spec["threads"])
    device = torch.device("cuda", rank) if spec["backend"] == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        spec["backend"],
        init_method=f"tcp://127.0.0.1:{spec['port']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=spec["timeout"]),
    )
    try:
        net, x, y = make_problem(spec, device)
        rows = block(spec["rows"], world, rank)
        # warm-up on a few rows: the first linearization imports what torch.func needs
        m = sum(p.numel() for p in net.parameters())
        ls.Products().jacobian(net, (x[:16],), y[:16]).matvec(x.new_zeros(m))

        def timed(fn):
            """``fn()``, its wall time (all processes start together), this process's CPU
            time (barriers across processes: not the harness's single-process timers)."""
            dist.barrier()
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            return out, time.perf_counter() - w0, time.process_time() - c0

        J, lin_s, _ = timed(lambda: ShardedProducts().jacobian(net, (x[rows],), y[rows]))
        b, damp, K = -J.residual, spec["damp"], spec["maxiter"]
        gen = torch.Generator().manual_seed(0)  # the same test vectors on every process
        nys = ls.precond.Nystrom(rank=spec["precond_rank"])
        M, build_s, build_cpu = timed(lambda: nys.build(J, damp=damp, generator=gen))
        res, solve_s, solve_cpu = timed(
            lambda: ls.lsmr(
                J, b, damp=damp, M=M, maxiter=K, atol=0.0, btol=0.0, conlim=float("inf")
            )
        )
        its = res.itn
        loss = 0.5 * float(J.row_norm(J.matvec(res.x) - b) ** 2)
        # one iteration's communication alone: all-reduce of m numbers, all-gather of a scalar
        buf, one = x.new_zeros(J.shape[1]), x.new_zeros(1)
        out1 = x.new_zeros(world)

        def collectives():
            for _ in range(K):
                dist.all_reduce(buf)
                dist.all_gather_into_tensor(out1, one)

        _, comm_s, _ = timed(collectives)
        slowest = torch.tensor(
            [solve_s / its, solve_cpu / its, build_s, build_cpu, lin_s, comm_s / K],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if rank == 0:
            names = ("iter_s", "iter_cpu_s", "build_s", "build_cpu_s", "linearize_s", "comm_s")
            out = {
                "procs": world,
                "rows_per_proc": rows.stop - rows.start,
                "iterations": its,
                **dict(zip(names, slowest.tolist(), strict=True)),
                "n_rows": J.shape[0],
                "n_params": J.shape[1],
                "loss_linearized": loss,
            }
            torch.save({"summary": out, "delta": res.x.cpu()}, Path(spec["outdir"]) / "rank0.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on the loopback now (for a process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, world: int) -> dict:
    """Start ``world`` worker processes, wait, return rank 0's summary and delta."""
    threads = str(spec["threads"])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "LOCAL_WORLD_SIZE": str(world),
    }
    if spec["backend"] == "gloo":
        env["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback only
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "world": world, "port": free_port(), "outdir": tmp}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lsr_scale.bench._harness",
                    "lsr_scale.bench.distributed:worker",
                    json.dumps({**spec, "rank": r}),
                ],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(world)
        ]
        try:
            logs = [p.communicate(timeout=spec["timeout"])[0] for p in procs]
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{world} processes: no result in {spec['timeout']} s") from None
        finally:
            for p in procs:  # only the processes started here
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for r, p in enumerate(procs):
            if p.returncode != 0:
                raise SystemExit(f"{world} processes: rank {r} exited {p.returncode}:\n{logs[r]}")
        return torch.load(Path(tmp) / "rank0.pt", weights_only=False)


def _caveat(backend: str, cores: int) -> str:
    if backend != "gloo":
        return "One GPU per process (NCCL)."
    return (
        f"**Caveat.** This machine has {cores} logical CPU cores, shared with other work "
        "(see the load averages): with one thread per process, runs with more processes than "
        "cores oversubscribe them, so their times measure the contention, not the method. The "
        "speedups beyond the core count are not a scaling result; rerun on a machine with at "
        "least as many idle cores as processes (or with `--backend nccl` on several GPUs) for one."
    )


@suite("distributed", "row-sharded LSMR over torch.distributed: speed-up")
def run(args) -> None:
    gloo = args.backend == "gloo"
    if args.quick:
        args.rows, args.width, args.maxiter = 2000, 32, 10
    if not gloo and (not torch.cuda.is_available() or torch.cuda.device_count() < max(args.procs)):
        raise SystemExit(
            f"--backend nccl: expected at least {max(args.procs)} CUDA devices (one per process)"
        )
    rec = Record("distributed", out=args.out, device="cpu" if gloo else "cuda", quick=args.quick)
    if args.replot:  # as recorded: the load averages too
        rec.meta.update(
            {k: v for k, v in json.loads(rec.path_json.read_text()).items() if k != "rows"}
        )
    else:
        spec = {
            k: getattr(args, k)
            for k in (
                "rows",
                "width",
                "maxiter",
                "precond_rank",
                "damp",
                "threads",
                "backend",
                "timeout",
            )
        }
        runs, deltas = [], {}
        for world in args.procs:
            out = launch(spec, world)
            runs.append(out["summary"])
            deltas[world] = out["delta"].double()
            s = out["summary"]
            comm = f"({1e3 * s['comm_s']:.1f} ms collectives), build {s['build_s']:.2f} s"
            print(f"{world} process(es): {1e3 * s['iter_s']:.1f} ms/iteration {comm}", flush=True)
        base, d0 = runs[0], deltas[args.procs[0]]
        for r in runs:
            r["speedup"] = base["iter_s"] / r["iter_s"] * base["procs"]
            r["efficiency"] = r["speedup"] / r["procs"]
            r["rel_delta"] = float((deltas[r["procs"]] - d0).norm() / d0.norm())
        machine = {
            "cpu_count": os.cpu_count(),
            "backend": args.backend,
            "threads_per_process": args.threads,
        }
        if not gloo:
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(max(args.procs))]
        problem = {
            **{k: spec[k] for k in ("rows", "width", "maxiter", "precond_rank", "damp")},
            "n_params": base["n_params"],
        }
        rec.rows = runs
        rec.set(
            command=args.command,
            machine=machine,
            problem=problem,
            caveat=_caveat(args.backend, os.cpu_count() or 0),
        )
    _outputs(rec, args)


@run.options
def _(parser) -> None:
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rows", type=int, default=16000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--maxiter", type=int, default=30)
    parser.add_argument("--precond-rank", type=int, default=20)
    parser.add_argument("--damp", type=float, default=1e-2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process count")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--replot", action="store_true", help="rewrite .md and figure from .json")


COLUMNS = [
    ("procs", "processes"),
    ("rows_per_proc", "rows each"),
    (lambda r: f"{1e3 * r['iter_s']:.1f}", "ms / iteration (wall)"),
    (lambda r: f"{1e3 * r['iter_cpu_s']:.1f}", "CPU ms / iteration"),
    (lambda r: f"{1e3 * r['comm_s']:.1f}", "collectives ms"),
    ("speedup:.2f", "speedup (wall)"),
    ("efficiency:.2f", "efficiency"),
    ("build_s:.2f", "build s"),
    ("linearize_s:.2f", "linearize s"),
    ("rel_delta:.1e", "rel. diff. of delta vs 1 process"),
]


def _outputs(rec: Record, args) -> None:
    """The markdown and the figure (from the rows; a record of the older script keeps its
    rows under ``runs`` and its load averages as numbers)."""
    m, p = rec.meta["machine"], rec.meta["problem"]
    runs = rec.rows or rec.meta.get("runs", [])
    loads = [rec.meta["load_start"], rec.meta.get("load_end") or load_info()]
    loads = [round((v["loadavg"] or [0])[0] if isinstance(v, dict) else v, 1) for v in loads]
    rec.meta["load_start"] = {"loadavg": [loads[0]]}
    problem = (
        f"Problem: tanh MLP [2, {p['width']}, {p['width']}, 1], float64, {p['n_params']} "
        f"parameters; {p['rows']} rows split in equal blocks; what `ls.Krylov` runs: LSMR with a "
        f"Nystrom preconditioner of rank {p['precond_rank']}, damp {p['damp']:g}, {p['maxiter']} "
        f"iterations (atol = btol = 0, stall off), the same seed on every process; "
        f"{m['threads_per_process']} thread(s) per process on {m['cpu_count']} logical CPUs"
        + (f", GPUs: {', '.join(m['gpus'])}" if m.get("gpus") else "")
        + f"; 1-min load average {loads[0]} at start, {loads[1]} at end. Times of the slowest "
        "process."
    )
    rec.markdown(
        f"Strong scaling of a row-sharded Krylov refinement over {m['backend']}",
        None,
        command=rec.meta.get("command", args.command),
        more=[problem, md_table(COLUMNS, runs), rec.meta["caveat"]],
    )
    if not args.no_plot:
        full = args.out == DEFAULT_OUT and not args.quick
        path = Path("docs") / "img" / "distributed_scaling.png" if full else None
        rec.plot(lambda fig, ax: _draw(fig, ax, runs, m, loads), path=path)


def _draw(fig, ax, runs, machine, loads) -> None:
    P = [r["procs"] for r in runs]
    fig.set_size_inches(9, 3.6)
    ax.remove()
    ax1, ax2 = fig.subplots(1, 2)
    for y, style, label in (
        ("iter_s", "o-", "wall"),
        ("iter_cpu_s", "s-", "CPU (slowest process)"),
        ("comm_s", "^-", "collectives alone"),
    ):
        ax1.plot(P, [1e3 * r[y] for r in runs], style, label=label)
    ax1.plot(P, [1e3 * runs[0]["iter_s"] / q for q in P], "k--", lw=1, label="ideal (wall)")
    ax1.set(yscale="log", ylabel="ms per LSMR iteration")
    ax2.plot(P, [r["speedup"] for r in runs], "o-", label="iteration (wall)")
    for y, style, label in (
        ("iter_cpu_s", "s-", "iteration (CPU)"),
        ("build_s", "d-", "build (wall)"),
    ):
        ax2.plot(P, [runs[0][y] / r[y] for r in runs], style, label=label)
    ax2.plot(P, P, "k--", lw=1, label="ideal")
    ax2.set_ylabel("speedup over 1 process")
    cores = machine["cpu_count"]
    over = [q for q in P if cores and q > cores]
    if machine["backend"] == "gloo" and over:
        lo = (max(q for q in P if q <= cores) * over[0]) ** 0.5 if over[0] != P[0] else P[0]
        for ax in (ax1, ax2):
            ax.axvspan(lo, max(P) * 1.1, color="0.9", zorder=0)
        ax2.text(lo * 1.03, 1.3, f"more processes\nthan {cores} cores", fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(P, [str(q) for q in P])
        ax.set_xlabel("processes")
        ax.legend(fontsize=7)
    rows, m = runs[0]["n_rows"], runs[0]["n_params"]
    title = f"Row-sharded LSMR, {rows} rows x {m} parameters, {machine['backend']}"
    if machine["backend"] == "gloo":
        title += (
            f" on {cores} CPU cores shared with other work (load average {loads[0]}-{loads[1]})"
        )
    fig.suptitle(title, fontsize=9)
