"""``lsr-scale bench lsmr``: LSMR iteration cost against one JVP + one VJP, and refine's
peak memory as the parameter count m grows.

1. ``overhead``: one LSMR iteration over one JVP followed by one VJP (timed together, as
   LSMR calls them) on the same :class:`~lsr_scale.JacobianOperator`, for MLPs of about
   1e4, 1e5, 1e6 parameters (GPU: also 3e6). The iteration time is the difference of two
   runs (``maxiter`` k2 and k1, tolerances 0) over k2 - k1, so set-up cost cancels.
   Targets: <= 1.2 on a CPU, <= 1.10 on a GPU at m >= 1e6.
2. ``memory``: peak memory added by ``refine(method=ls.Krylov(preconditioner=None))`` and
   ``refine(method=ls.Subspace(reduced="dense"))``, each in a fresh process (CPU: peak
   resident set growth; GPU: peak allocated tensor memory).
"""

from __future__ import annotations

import math

import torch

from ._harness import Record, peak_memory, run_isolated, step_time, suite, timeit

OVERHEAD = [
    ("n_params", "params m"),
    ("jvp_ms:.2f", "JVP (ms)"),
    ("vjp_ms:.2f", "VJP (ms)"),
    ("pair_ms:.2f", "JVP+VJP pair (ms)"),
    ("lsmr_iter_ms:.2f", "LSMR iter (ms)"),
    ("ratio:.3f", "iter / pair"),
    ("ratio_vs_separate:.3f", "iter / (JVP + VJP timed apart)"),
]


def _mib(key):
    return lambda r: f"{r[key] / 2**20:.1f} MiB"


def _problem(m_target: int, rows: int, device, dtype):
    from ..models import MLP
    from ._models import mlp_widths

    widths = mlp_widths(m_target)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MLP(widths).to(device=device, dtype=dtype)
    x = (torch.rand(rows, 2, generator=g, dtype=dtype) * 2 - 1).to(device)
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    return widths, model, x, y, g


def overhead_row(m_target, rows, device, dtype, k1, k2, reps) -> dict:
    """One MLP's LSMR iteration against its JVP, VJP and JVP+VJP pair."""
    import lsr_scale as ls

    widths, model, x, y, g = _problem(m_target, rows, device, dtype)
    J = ls.JacobianOperator.from_module(model, x, y)
    n, m = J.shape
    v = torch.randn(m, generator=g, dtype=dtype).to(device)
    u = torch.randn(n, generator=g, dtype=dtype).to(device)
    t_jvp = timeit(lambda: J.matvec(v), repeat=reps, device=device)
    t_vjp = timeit(lambda: J.rmatvec(u), repeat=reps, device=device)
    t_pair = timeit(lambda: (J.matvec(v), J.rmatvec(u)), repeat=reps, device=device)
    b = -J.residual

    def solve(k):
        return ls.lsmr(J, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=k)

    assert solve(k2).itn == k2, "LSMR stopped early: timing invalid"
    t_iter = step_time(solve, k1, k2, repeat=max(1, reps // 3), device=device)
    return {
        "widths": list(widths),
        "n_rows": n,
        "n_params": m,
        "jvp_ms": 1e3 * t_jvp,
        "vjp_ms": 1e3 * t_vjp,
        "pair_ms": 1e3 * t_pair,
        "lsmr_iter_ms": 1e3 * t_iter,
        "ratio": t_iter / t_pair,
        "ratio_vs_separate": t_iter / (t_jvp + t_vjp),
        "jvp_mode": J.jvp_mode,
        "linearize": bool(getattr(J, "uses_linearize", False)),
    }


def memory_child(spec: dict) -> dict:
    """One refine in a fresh process (:func:`run_isolated`); the peak memory it added."""
    import lsr_scale as ls

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    widths, model, x, y, g = _problem(spec["m_target"], spec["rows"], device, dtype)
    if spec["method"] == "krylov":
        method = ls.Krylov(preconditioner=None, maxiter=spec["krylov_iters"])
    else:
        method = ls.Subspace(rank=spec["rank"], reduced="dense")
    with peak_memory(device) as pm:
        r = ls.refine(model, data=(x, y), method=method, generator=g, progress_bar=False)
    return {
        "widths": list(widths),
        "n_params": r.info["n_params"],
        "peak_bytes": pm.increment_bytes,
        "time_s": r.info["times"]["total"],
        "peak_kind": pm.kind,
    }


def memory_row(m_target, rows, device, dtype, rank, threads) -> dict:
    row = {"n_rows": rows}
    for method in ("krylov", "subspace"):
        spec = dict(
            device=str(device),
            dtype=str(dtype).split(".")[-1],
            m_target=m_target,
            rows=rows,
            rank=rank,
            krylov_iters=20,
            method=method,
            threads=threads,
        )
        res = run_isolated(f"{__name__}:memory_child", spec)
        row.update(widths=res["widths"], n_params=res["n_params"])
        row[f"{method}_peak_bytes"] = res["peak_bytes"]
        row[f"{method}_time_s"] = res["time_s"]
    row["subspace_over_krylov"] = row["subspace_peak_bytes"] / max(row["krylov_peak_bytes"], 1)
    return row


def _legacy(doc):
    """Rows of a file written by the old bench/bench_lsmr_overhead.py."""
    rows = [
        {"section": sec, "m_target": None, **r}
        for sec in ("overhead", "memory")
        for r in doc.get(sec, [])
    ]
    return rows, ("overhead", "memory")


@suite("lsmr", "one LSMR iteration against one JVP + one VJP, and refine's peak memory")
def run(args) -> None:
    dev, dtype = args.device, getattr(torch, args.dtype)
    rows = args.rows or (16384 if dev.type == "cuda" else 2000)
    if args.quick:
        sizes, mem_sizes, reps, k1, k2 = [10_000], [10_000], 3, 2, 6
    else:
        sizes, mem_sizes, reps, k1, k2 = (
            [10_000, 100_000, 1_000_000],
            [10_000, 50_000, 200_000],
            7,
            5,
            25,
        )
        sizes += [3_000_000] if dev.type == "cuda" else []
    sizes = args.sizes or sizes
    rank = min(500, rows // 2)
    rec = Record(
        "lsmr", stem="lsmr_overhead", out=args.out, device=dev, quick=args.quick, legacy=_legacy
    )
    rec.set(command=args.command, dtype=args.dtype, rows_per_model=rows, subspace_rank=rank)
    for m in sizes:
        if not rec.has(section="overhead", m_target=m, n_rows=rows):
            row = overhead_row(m, rows, dev, dtype, k1, k2, reps)
            rec.add({"section": "overhead", "m_target": m, **row})
            print(f"  m={row['n_params']:>9,}  LSMR iter / pair {row['ratio']:.3f}", flush=True)
    for m in [] if args.no_memory else mem_sizes:
        if not rec.has(section="memory", m_target=m, n_rows=rows):
            row = memory_row(m, rows, dev, dtype, rank, args.threads)
            rec.add({"section": "memory", "m_target": m, **row})
            print(f"  m={row['n_params']:>9,}  subspace/krylov {row['subspace_over_krylov']:.1f}x")
    mem_cols = [
        ("n_params", "params m"),
        (_mib("krylov_peak_bytes"), "krylov peak added"),
        (_mib("subspace_peak_bytes"), f"subspace (k={rank}) peak added"),
        (lambda r: f"{r['subspace_over_krylov']:.1f}x", "subspace / krylov"),
    ]
    from ._harness import md_table

    text = rec.markdown(
        f"LSMR overhead and refine memory ({args.dtype}, {rows} residual rows)",
        OVERHEAD,
        command=args.command,
        rows=[r for r in rec.rows if r["section"] == "overhead"],
        more=[md_table(mem_cols, [r for r in rec.rows if r["section"] == "memory"])],
        notes=[
            "Peak memory is measured in a fresh process per refine (CPU: growth of the peak "
            "resident set; GPU: peak allocated tensor memory). Krylov: 20 unpreconditioned "
            "LSMR iterations; subspace: dense reduced solve."
        ],
    )
    print(text)


@run.options
def _options(parser) -> None:
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--rows", type=int, default=None, help="default 2000 CPU, 16384 GPU")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="parameter targets")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
