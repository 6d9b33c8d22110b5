"""``lsr-scale bench scale``: how memory and time grow with the parameters.

An MLP 2-W-W-1 (tanh), a DeepONet and a transformer block at m ~ 1e5, 1e6 and 1e7
parameters and n = 1e3 to 1e5 rows with random targets. Each run is
``ls.refine(model, data=(x, y), method=ls.Krylov(maxiter=...))`` with every other setting at
its default, in a fresh process (capped at ``--limit`` seconds). Per run:

* ``iter_over_pair``: (solve time / iterations) over one JVP + one VJP (float64 products, as
  refine takes them by default);
* ``peak_added`` and ``peak_over_base``: the peak memory the run added, and that over the
  model plus one batch of activations;
* ``build_share``: the preconditioner build's share of the refine time;
* ``loss_ratio``: linearized loss after / before; ``estimate``: the memory model's estimate;
* on a GPU (``lsr-scale bench gpu``): ``lsmr_over_pair``, 20 unpreconditioned float32 LSMR
  iterations over one JVP + one VJP, with the CUDA kernels on and off.

Configurations whose plan does not fit the device (``ls.plan``) are recorded as skipped.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings

from ._harness import Record, peak_memory, run_isolated, suite, timeit

# (model, size knob, rows, maxiter): the size knob gives m ~ 1e5, 1e6, 1e7
RUNS = [
    ("mlp", 316, 1_000, 10),
    ("mlp", 316, 10_000, 10),
    ("mlp", 316, 100_000, 10),
    ("mlp", 1000, 1_000, 10),
    ("mlp", 1000, 10_000, 10),
    ("mlp", 3162, 1_000, 5),
    ("mlp", 3162, 10_000, 5),
    ("deeponet", 220, 1_000, 10),
    ("deeponet", 700, 1_000, 10),
    ("deeponet", 700, 10_000, 10),
    ("deeponet", 2200, 1_000, 5),
    ("transformer", 128, 1_000, 10),
    ("transformer", 400, 1_000, 10),
    ("transformer", 1100, 1_000, 5),
]
QUICK = [("mlp", 100, 1_000, 5), ("deeponet", 64, 1_000, 5), ("transformer", 32, 200, 5)]
# the GPU sweep, up to 5e7 parameters, with the default Krylov() (maxiter None)
GPU_RUNS = [
    ("mlp", 1000, 10_000, None),
    ("mlp", 3162, 10_000, None),
    ("mlp", 7071, 10_000, None),
    ("deeponet", 2200, 10_000, None),
    ("deeponet", 4950, 10_000, None),
    ("transformer", 1100, 10_000, None),
    ("transformer", 2500, 10_000, None),
]
TINY = [("mlp", 16, 200, 3), ("deeponet", 16, 200, 3), ("transformer", 16, 100, 3)]

COLUMNS = [
    ("model", "model"),
    ("m:.2e", "m"),
    ("n", "n"),
    ("iterations", "iters"),
    ("t_pair:.3f", "JVP+VJP (s)"),
    ("iter_over_pair:.2f", "iter / (JVP+VJP)"),
    (lambda r: f"{r['peak_added'] / 1e6:,.0f}", "peak added (MB)"),
    (lambda r: f"{r['estimate'] / 1e6:,.0f}", "estimate (MB)"),
    ("peak_over_base:.1f", "peak / (model + acts)"),
    ("build_share:.2f", "build share"),
    ("loss_ratio:.3f", "loss after/before"),
]
GPU_COLUMNS = [
    ("model", "model"),
    ("m:.2e", "m"),
    ("n", "n"),
    (lambda r: "on" if r["kernels"] else "off", "kernels"),
    (lambda r: f"{r['peak_added'] / 1e9:.2f}", "peak added (GB)"),
    (lambda r: f"{r.get('planned', 0) / 1e9:.2f}", "planned (GB)"),
    (lambda r: len(r.get("adapted") or []), "adapted"),
    ("iter_over_pair:.2f", "iter/(JVP+VJP) refine"),
    ("lsmr_over_pair:.2f", "LSMR iter/(JVP+VJP)"),
    ("build_share:.2f", "build share"),
    ("loss_ratio:.3f", "loss after/before"),
]


def key(run, kernels=None) -> str:
    """``mlp-1000-n10000-it20`` (``-itdefault`` for maxiter None; ``-k1``/``-k0`` kernels)."""
    kind, w, rows, maxiter = run
    k = f"{kind}-{w}-n{rows}-it{'default' if maxiter is None else maxiter}"
    return k if kernels is None else f"{k}-k{int(kernels)}"


def lsmr_ratio(run, device, iters=20) -> dict:
    """Seconds per unpreconditioned float32 LSMR iteration over one JVP + one VJP."""
    import torch

    import lsr_scale as ls

    from ._models import make

    model, inputs, targets = make(*run[:3], device=device)
    J = ls.JacobianOperator.from_module(model, inputs, targets, check=False, batch_size=64)
    v = torch.randn(J.shape[1], device=device)
    u = torch.randn(J.shape[0], device=device)
    pair = timeit(lambda: (J.matvec(v), J.rmatvec(u)), repeat=3, device=device)
    b = -J.residual
    ls.lsmr(J, b, maxiter=2)
    res = []
    per = (
        timeit(
            lambda: res.append(ls.lsmr(J, b, maxiter=iters, atol=0.0, btol=0.0, conlim=math.inf)),
            repeat=1,
            warmup=0,
            device=device,
        )
        / iters
    )
    assert res[-1].itn == iters
    return {"t_pair_f32": pair, "t_lsmr_iter": per, "lsmr_over_pair": per / pair}


def one(spec: dict) -> dict:
    """One configuration, in this (fresh) process: ``spec`` has run, device, kernels."""
    import torch

    import lsr_scale as ls
    from lsr_scale.refine._memory import activation_bytes_per_row, estimate

    from ._models import make

    torch.set_num_threads(spec.get("threads") or 1)
    run, device, kernels = tuple(spec["run"]), spec["device"], spec.get("kernels", True)
    kind, w, rows, maxiter = run
    model, inputs, targets = make(kind, w, rows, device=device)
    m = sum(p.numel() for p in model.parameters())
    act_row = activation_bytes_per_row(model, inputs)
    method = ls.Krylov() if maxiter is None else ls.Krylov(maxiter=maxiter)
    plan = ls.plan(model, data=(inputs, targets), method=method)
    if not getattr(plan, "fits", True):
        return {"key": key(run), "skipped": f"does not fit: plan {plan.peak_bytes / 1e9:.1f} GB"}
    est = estimate(
        plan.method,
        m=m,
        n=rows,
        act_row=act_row,
        dtype=torch.float32,
        product_dtype=torch.float64,
        vmap=device != "cpu",
        batch=plan.products.batch_size or 64,
    )
    with warnings.catch_warnings():  # one JVP + one VJP with float64 products
        warnings.simplefilter("ignore")
        m64 = model.double()
        J = ls.JacobianOperator.from_module(
            m64, tuple(x.double() for x in inputs), targets.double(), check=False
        )
        v = torch.randn(m, dtype=torch.float64, device=device)
        u = torch.randn(J.shape[0], dtype=torch.float64, device=device)
        t_pair = timeit(lambda: (J.matvec(v), J.rmatvec(u)), repeat=2, device=device)
        J = v = u = m64 = None
    model = model.float()

    def off():  # a fresh context each time (they cannot be re-entered)
        return ls.cuda.disabled() if not kernels else contextlib.nullcontext()

    with warnings.catch_warnings(), off(), peak_memory(device) as pm:
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r = ls.refine(
            model,
            data=(inputs, targets),
            method=method,
            generator=torch.Generator(device=device).manual_seed(0),
        )
        wall = time.perf_counter() - t0
    info, times = r.info, r.info["times"]
    its = max(int(info["iterations"]), 1)
    build = float(info["preconditioner"].get("build_time") or times.get("precond_build", 0.0))
    batch_act = act_row * rows
    out = dict(
        key=key(run),
        model=kind,
        width=w,
        m=m,
        n=rows,
        maxiter=maxiter,
        device=device,
        kernels=kernels,
        iterations=its,
        t_pair=t_pair,
        t_iter=times["solve"] / its,
        iter_over_pair=times["solve"] / its / t_pair,
        build_time=build,
        build_share=build / times["total"],
        wall=wall,
        peak_added=pm.increment_bytes,
        peak_rss=pm.peak_bytes,
        model_bytes=m * 4,
        act_bytes=batch_act,
        peak_over_base=pm.increment_bytes / (m * 4 + batch_act),
        estimate=est.total,
        estimate_parts=est.parts,
        planned=plan.peak_bytes,
        adapted=info["adapted"],
        precond_rank=info["preconditioner"].get("rank"),
        space=info["space"],
        loss_ratio=info["loss_linearized"] / info["loss_before"],
    )
    if spec.get("lsmr"):
        with off():
            out.update(lsmr_ratio(run, device))
    if device != "cpu":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def sweep(rec: Record, runs, device, *, limit, kernels=(None,), lsmr=False, threads=1):
    """Each configuration in a fresh process, skipping recorded ones; failures recorded."""
    for run in runs:
        for k in kernels:
            name = key(run, k)
            if rec.has(key=name):
                continue
            spec = dict(
                run=list(run),
                device=str(device),
                kernels=k is not False,
                lsmr=lsmr,
                threads=threads,
            )
            t0 = time.perf_counter()
            try:
                res = run_isolated(f"{__name__}:one", spec, timeout=limit)
            except Exception as err:  # noqa: BLE001 - recorded; the sweep goes on
                msg = f"over the {limit} s limit" if "Timeout" in type(err).__name__ else str(err)
                res = {"error": msg[-2000:]}
            res.update(key=name, process_wall=time.perf_counter() - t0)
            rec.add(res, key=("key",))
            status = res.get("error") or res.get("skipped") or f"{res['wall']:.0f} s"
            print(f"  {name}: {str(status)[:120]}", flush=True)


def table_rows(rec: Record):
    """Measured rows, by model and size; failures and skips go into the notes."""
    ok = [r for r in rec.rows if "error" not in r and "skipped" not in r]
    bad = [
        f"{r['key']}: {(r.get('error') or r.get('skipped'))[:100]!r}"
        for r in rec.rows
        if r not in ok
    ]
    return sorted(ok, key=lambda r: (r["model"], r["m"], r["n"])), bad


def draw(fig, ax, rows) -> None:
    """Peak memory added against m, one line per (model, n)."""
    for kind, mk in [("mlp", "o"), ("deeponet", "s"), ("transformer", "^")]:
        for n, style in [(1_000, "-"), (10_000, "--"), (100_000, ":")]:
            rs = sorted(
                (r for r in rows if r["model"] == kind and r["n"] == n), key=lambda r: r["m"]
            )
            if rs:
                ax.loglog(
                    [r["m"] for r in rs],
                    [r["peak_added"] / 1e6 for r in rs],
                    mk + style,
                    label=f"{kind}, n={n:,}",
                )
    ax.set(xlabel="parameters m", ylabel="peak memory added (MB)", title="refine(Krylov)")
    ax.legend(fontsize=7)


@suite("scale", "Krylov refine time, memory and error as parameters and rows grow")
def run(args) -> None:
    rec = Record(
        "scale",
        out=args.out,
        device=args.device,
        quick=args.quick,
        legacy=lambda doc: (list(doc.get("runs", {}).values()), ("runs",)),
    )
    rec.set(command=args.command)
    runs = QUICK if args.quick else RUNS
    runs = [r for r in runs if args.only is None or args.only in key(r)]
    if not args.report:
        sweep(rec, runs, args.device, limit=args.limit, threads=args.threads)
    rows, bad = table_rows(rec)
    text = rec.markdown(
        "refine at scale",
        COLUMNS,
        command=args.command,
        rows=rows,
        notes=[
            "`refine(model, data, method=ls.Krylov(maxiter=..))`, other settings default, "
            "random targets, a fresh process per run.",
            *bad,
        ],
    )
    rec.plot(lambda fig, ax: draw(fig, ax, rows))
    print(text)


@run.options
def _options(parser) -> None:
    parser.add_argument("--limit", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--only", default=None, help="substring of the run keys to do")
    parser.add_argument("--report", action="store_true", help="table and plot from the JSON only")
