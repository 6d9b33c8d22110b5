"""How memory and time grow with the parameters: ``refine(method="krylov")`` from 1e5 to 1e7.

An MLP 2-W-W-1 (tanh), a DeepONet (``lsr_scale.models.DeepONet``) and a transformer block
(``torch.nn.TransformerEncoderLayer`` between a linear embedding and a mean-pooled linear
head), at m ~ 1e5, 1e6 and 1e7 parameters and n = 1e3 to 1e5 data rows with random targets.
Each run is ``ls.refine(model, data=(x, y), method=ls.Krylov(maxiter=...))`` with every other
setting at its default, in a fresh process (capped at ``--limit`` seconds). Per run:

* ``iter_over_pair``: (solve time / iterations) over the time of one JVP + one VJP;
* ``peak_added`` (bytes the run added to the process) and ``peak_over_base``: that over the
  model plus one batch of activations (the activations of one forward pass over the rows);
* ``build_share``: the preconditioner build's share of the refine time;
* ``loss_ratio``: linearized loss after / before (random targets: the reduction reached);
* the memory model's estimate (``lsr_scale.refine._memory.estimate``) beside the measurement.

Results go to ``bench/results/scale_cpu.json`` as each run ends (a rerun skips recorded
runs), then a markdown table beside it and the log-log plot ``docs/img/scale_cpu.png``.

    python bench/bench_scale.py            # the sweep (resumes)
    python bench/bench_scale.py --report   # table and plot from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "results" / "scale_cpu"
PLOT = HERE.parent / "docs" / "img" / "scale_cpu.png"

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


def key(run) -> str:
    """``mlp-1000-n10000-it20``; ``...-itdefault`` for the default ``maxiter`` (None)."""
    kind, w, rows, maxiter = run
    return f"{kind}-{w}-n{rows}-it{'default' if maxiter is None else maxiter}"


def make(kind: str, w: int, rows: int, device="cpu", dtype=None):
    """``(model, inputs, targets)`` of a run (seeded)."""
    import torch

    from lsr_scale.models import DeepONet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Linear(2, w), torch.nn.Tanh(), torch.nn.Linear(w, w), torch.nn.Tanh(),
            torch.nn.Linear(w, 1),
        )  # fmt: skip
        inputs = (torch.rand(rows, 2, generator=g) * 2 - 1,)
    elif kind == "deeponet":
        sensors = 100
        model = DeepONet([sensors, w, w, 64], [2, w, w, 64])
        inputs = (torch.randn(rows, sensors, generator=g), torch.rand(rows, 2, generator=g))
    elif kind == "transformer":
        model = _Transformer(w)
        inputs = (torch.randn(rows, 8, 4, generator=g),)
    else:
        raise ValueError(f"kind: expected mlp, deeponet or transformer, got {kind!r}")
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    inputs = tuple(x.to(device=device, dtype=dtype or torch.float32) for x in inputs)
    targets = torch.randn(rows, 1, generator=g).to(device=device, dtype=inputs[0].dtype)
    return model, inputs, targets


def _Transformer(d: int):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.backends.mha.set_fastpath_enabled(False)  # the fused layer has no forward AD

    class Block(torch.nn.Module):
        """Linear embedding, one ``TransformerEncoderLayer`` (4 heads, feed-forward 2d),
        mean over the sequence, linear head."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(4, d)
            self.layer = torch.nn.TransformerEncoderLayer(
                d, nhead=4, dim_feedforward=2 * d, dropout=0.0, batch_first=True
            )
            self.head = torch.nn.Linear(d, 1)

        def forward(self, x):
            # the math attention kernel: the fused CPU ones have no forward-mode derivative
            with sdpa_kernel(SDPBackend.MATH):
                return self.head(self.layer(self.embed(x)).mean(dim=1))

    return Block()


def one(run, device="cpu", kernels=True) -> dict:
    """One run, in this process."""
    import torch

    import lsr_scale as ls
    from lsr_scale._utils import PeakMemory
    from lsr_scale.refine._memory import activation_bytes_per_row, estimate

    kind, w, rows, maxiter = run
    model, inputs, targets = make(kind, w, rows, device=device)
    m = sum(p.numel() for p in model.parameters())
    act_row = activation_bytes_per_row(model, inputs)
    method = ls.Krylov() if maxiter is None else ls.Krylov(maxiter=maxiter)
    # what refine will run: the plan (settings adapted to the budget) and its estimate
    plan = ls.plan(model, data=(inputs, targets), method=method)
    est = estimate(
        plan.method, m=m, n=rows, act_row=act_row, dtype=torch.float32,
        product_dtype=torch.float64, vmap=device != "cpu",
        batch=plan.products.batch_size or 64,
    )  # fmt: skip
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    # one JVP + one VJP (float64 products, as refine's default takes them), timed apart
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m64 = model.double()
        J = ls.JacobianOperator.from_module(
            m64, tuple(x.double() for x in inputs), targets.double(), check=False
        )
        v = torch.randn(m, dtype=torch.float64, device=device)
        u = torch.randn(J.shape[0], dtype=torch.float64, device=device)
        J.matvec(v), J.rmatvec(u)
        sync()
        t0 = time.perf_counter()
        for _ in range(2):
            J.matvec(v), J.rmatvec(u)
        sync()
        t_pair = (time.perf_counter() - t0) / 2
        del J, v, u, m64
    model = model.float()
    ctx = ls.cuda.disabled() if not kernels else _null()
    with warnings.catch_warnings(), ctx, PeakMemory(device) as pm:
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r = ls.refine(model, data=(inputs, targets), method=method,
                      generator=torch.Generator(device=device).manual_seed(0))  # fmt: skip
        wall = time.perf_counter() - t0
    info = r.info
    times = info["times"]
    its = max(int(info["iterations"]), 1)
    build = float(info["preconditioner"].get("build_time") or times.get("precond_build", 0.0))
    model_bytes = m * 4
    batch_act = act_row * rows
    return dict(
        key=key(run), model=kind, width=w, m=m, n=rows, maxiter=maxiter, device=device,
        kernels=kernels, iterations=its, t_pair=t_pair,
        t_iter=(times["solve"]) / its, iter_over_pair=times["solve"] / its / t_pair,
        build_time=build, build_share=build / times["total"], wall=wall,
        peak_added=pm.increment_bytes, peak_rss=pm.peak_bytes,
        model_bytes=model_bytes, act_bytes=batch_act,
        peak_over_base=pm.increment_bytes / (model_bytes + batch_act),
        estimate=est.total, estimate_parts=est.parts, planned=plan.peak_bytes,
        adapted=info["adapted"],
        precond_rank=info["preconditioner"].get("rank"), space=info["space"],
        loss_ratio=info["loss_linearized"] / info["loss_before"],
    )  # fmt: skip


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def sweep(runs, out: Path, limit: int, extra=()) -> dict:
    """Each run in a fresh process, skipping recorded ones; failures are recorded too."""
    data = load(out)
    data.setdefault("machine", f"{platform.machine()}, {os.cpu_count()} cores, 1 thread")
    for run in runs:
        k = key(run)
        if k in data["runs"]:
            continue
        cmd = [sys.executable, __file__, "--one", json.dumps(list(run)), *extra]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            res = json.loads(lines[-1]) if lines else {"error": p.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            res = {"error": f"over the {limit} s limit"}
        res.setdefault("key", k)
        res["process_wall"] = time.perf_counter() - t0
        data["runs"][k] = res
        save(out, data)
        print(k, "error" if "error" in res else f"{res['wall']:.0f} s", flush=True)
    return data


def table(data: dict) -> str:
    head = (
        "| model | m | n | iters | JVP+VJP (s) | iter / (JVP+VJP) | peak added (MB) | "
        "estimate (MB) | peak / (model + acts) | build share | loss after/before |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in sorted(data["runs"].values(), key=lambda r: (r.get("model", ""), r.get("m", 0))):
        if "error" in r:
            rows.append(f"| {r['key']} | | | | | | | | | | {r['error'][:60]!r} |")
            continue
        rows.append(
            f"| {r['model']} | {r['m']:.2e} | {r['n']:,} | {r['iterations']} | "
            f"{r['t_pair']:.3f} | {r['iter_over_pair']:.2f} | {r['peak_added'] / 1e6:,.0f} | "
            f"{r['estimate'] / 1e6:,.0f} | {r['peak_over_base']:.1f} | "
            f"{r['build_share']:.2f} | {r['loss_ratio']:.3f} |"
        )
    return head + "\n".join(rows) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, mk in [("mlp", "o"), ("deeponet", "s"), ("transformer", "^")]:
        for n, ls_ in [(1_000, "-"), (10_000, "--"), (100_000, ":")]:
            rs = sorted(
                (r for r in data["runs"].values()
                 if r.get("model") == kind and r.get("n") == n and "error" not in r),
                key=lambda r: r["m"],
            )  # fmt: skip
            if not rs:
                continue
            ms = [r["m"] for r in rs]
            lab = f"{kind}, n={n:,}"
            a1.loglog(ms, [r["peak_added"] / 1e6 for r in rs], mk + ls_, label=lab)
            a2.loglog(ms, [r["t_iter"] for r in rs], mk + ls_, label=lab)
    ref = [1e5, 1e7]
    a1.loglog(ref, [x * 8 * 30 / 1e6 for x in ref], "k:", lw=0.8, label="30 m float64 numbers")
    a1.set(xlabel="parameters m", ylabel="peak memory added (MB)", title="memory")
    a2.set(xlabel="parameters m", ylabel="seconds per iteration", title="time")
    a1.legend(fontsize=7)
    fig.suptitle("refine(method='krylov', maxiter=5-10), CPU, 1 thread")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(data: dict, out: Path, plot_path: Path | None) -> str:
    text = (
        "# refine at scale (CPU)\n\n"
        f"Machine: {data.get('machine')}. `refine(model, data, method=ls.Krylov(maxiter=..))`, "
        "other settings default, random targets, fresh process per run. Command: "
        "`python bench/bench_scale.py`.\n\n" + table(data)
    )
    out.with_suffix(".md").write_text(text)
    if plot_path is not None:
        plot(data, plot_path)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help="run one configuration (JSON list) in this process")
    ap.add_argument("--report", action="store_true", help="table and plot only")
    ap.add_argument("--limit", type=int, default=600, help="seconds per run (default 600)")
    ap.add_argument("--only", default=None, help="substring of the run keys to do")
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(one(tuple(json.loads(args.one)))), flush=True)
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    out = OUT.with_suffix(".json")
    if not args.report:
        runs = [r for r in RUNS if args.only is None or args.only in key(r)]
        sweep(runs, out, args.limit)
    print(report(load(out), out, PLOT))


if __name__ == "__main__":
    main()
