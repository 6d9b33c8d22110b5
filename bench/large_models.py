"""Default refines of large models on this machine, their memory against the plan, and plans
for a 80 GB device (issue 16's targets; ``docs/scale.md``, "Large models with defaults").

Each ``run`` case trains a model briefly, then refines it with default arguments
(``method="subspace"`` or ``"krylov"``, nothing else) in a fresh process, and records the
training and test error before and after, the peak resident memory the refine added
(``PeakMemory.increment_bytes``), the plan's estimate (``info["memory_estimate"]``), what
was adapted, the time and the stop. Each ``plan`` case records ``ls.plan`` for a model of
5e7 parameters with the budget of an 80 GB device (half of it), without running.

Results go to ``bench/results/large_models_cpu.{json,md}`` as each case finishes; a rerun
skips the cases already recorded (``--force`` redoes them)::

    python bench/large_models.py --threads 1                 # everything (about 1 hour)
    python bench/large_models.py --only mlp-1e6 mlp-1e7/krylov --force   # redo some
    python bench/large_models.py --tv-python /tmp/tvenv/bin/python   # torchvision there
    python bench/large_models.py --quick      # a 1e5-parameter MLP and one plan (_quick files)

The ResNet cases need torchvision (matching the installed torch); ``--tv-python`` names an
interpreter that has it (with this checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import lsr_scale as ls
from lsr_scale.bench._harness import Record, md_table, parse_script, peak_memory, run_isolated

HERE = Path(__file__).resolve().parent


def _mlp(width, rows, g):
    L = torch.nn.Linear
    net = torch.nn.Sequential(L(2, width), torch.nn.Tanh(), L(width, width), torch.nn.Tanh(),
                              L(width, 1))  # fmt: skip

    def data(k):
        x = torch.rand(k, 2, generator=g) * 2 - 1
        return x, (torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:]))

    return net, data(rows), data(2000), 200, 1e-4


def _resnet(rows, g):
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    w = torch.randn(3 * 32 * 32, 10, generator=g) / 55.0

    def data(k):
        x = torch.randn(k, 3, 32, 32, generator=g)
        return x, torch.tanh(x.reshape(k, -1) @ w)

    return net, data(rows), data(256), 100, 1e-3


def child(spec: dict) -> dict:
    """One refine in a fresh process: build, train briefly, refine with defaults, measure."""
    case, method = spec["case"], spec["method"]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    widths = {"mlp-1e7": (3162, 100), "mlp-1e6": (998, 1000), "mlp-1e5": (314, 200)}
    make = _resnet(32, g) if case == "resnet18" else _mlp(*widths[case], g)
    net, (x, y), (xt, yt), steps, lr = make
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    t_train = time.perf_counter() - t0
    net.eval()

    def rel(f, a, b):
        with torch.no_grad():
            return float((f(a) - b).norm() / b.norm())

    row = dict(case=case, method=method, n_params=sum(p.numel() for p in net.parameters()),
               n_rows=int(y.numel()), train_steps=steps, train_s=t_train,
               train_before=rel(net, x, y), test_before=rel(net, xt, yt))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peak_memory("cpu") as pm:
            r = ls.refine(net, data=(x, y), method=method, generator=g, progress_bar=False)
    info = r.info
    row.update(
        train_after=rel(r, x, y), test_after=rel(r, xt, yt),
        added_bytes=pm.increment_bytes, peak_kind=pm.kind,
        estimate_bytes=sum(info["memory_estimate"].values()), parts=info["memory_estimate"],
        adapted=info["adapted"], wall_s=info["times"]["total"], times=info["times"],
        rank=info.get("rank"), iterations=info.get("iterations"), stop=info.get("stop"),
        preconditioner={k: v for k, v in (info.get("preconditioner") or {}).items()
                        if isinstance(v, (int, float, str, type(None)))},
        precision=info.get("precision"), settings=repr(info["settings"]),
        warnings=[str(w.message)[:300] for w in caught],
    )  # fmt: skip
    return row


def plan(spec: dict) -> dict:
    """``ls.plan`` at 5e7 parameters with an 80 GB device's budget (nothing of the problem's
    size is allocated: one forward pass of a few rows measures the activations)."""
    from lsr_scale.refine._plan import default_budget

    case, method = spec["case"], spec["method"]
    torch.manual_seed(0)
    if case == "plan-mlp-5e7":
        L, W = torch.nn.Linear, 7071
        net = torch.nn.Sequential(L(2, W), torch.nn.Tanh(), L(W, W), torch.nn.Tanh(), L(W, 1))
        x, y = torch.rand(500, 2), torch.rand(500, 1)
    else:
        import torchvision

        net = torchvision.models.resnet152(num_classes=10).eval()
        x, y = torch.randn(64, 3, 32, 32), torch.randn(64, 10)
    budget = default_budget(free=80e9)
    # as refine would on an H100 (float64 products: sm_90 runs them at half rate; vmap batches)
    p = ls.plan(net, data=(x, y), method=method, memory_budget=budget,
                products=ls.Products(batching="vmap"))  # fmt: skip
    return dict(case=case, method=method, n_params=sum(q.numel() for q in net.parameters()),
                n_rows=int(y.numel()), budget=budget, peak_bytes=p.peak_bytes, parts=p.parts,
                adapted=list(p.adapted), settings=repr(p.method), notes=list(p.notes))  # fmt: skip


RUNS = [("mlp-1e6", "krylov"), ("mlp-1e6", "subspace"), ("mlp-1e7", "subspace"),
        ("mlp-1e7", "krylov"), ("resnet18", "subspace"), ("resnet18", "krylov")]  # fmt: skip
PLANS = [("plan-mlp-5e7", "krylov"), ("plan-mlp-5e7", "subspace"),
         ("plan-resnet152", "krylov"), ("plan-resnet152", "subspace")]  # fmt: skip
QUICK = [("mlp-1e5", "krylov"), ("mlp-1e5", "subspace"), ("plan-mlp-5e7", "krylov")]


def _run(case, method, args):
    python = args.tv_python if "resnet" in case else sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    target = "large_models:" + ("plan" if case.startswith("plan-") else "child")
    try:
        return run_isolated(target, {"case": case, "method": method}, timeout=args.timeout,
                            env=env, python=python, threads=args.threads)  # fmt: skip
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return {"case": case, "method": method, "error": str(err)[-1500:]}


def _stop(text):
    """The rule that ended a Krylov solve: "stalled", "validation", or the solver's istop."""
    head = (text or "").split(":")[0]
    return f"istop {head}" if head.isdigit() else head


def _gb(x):
    return f"{x / 1e9:.2f}"


def _adapted(r):
    return "; ".join(f"{c['setting']} {c['from']} -> {c['to']}" for c in r["adapted"]) or "none"


def _failed(r):
    return f"failed: {r['error'].splitlines()[-1][:80]}" if "error" in r else None


def _ok(cell, header):
    """A column whose cell is empty on a failed row."""
    return (lambda r: None if "error" in r else cell(r)), header


RUN_COLUMNS = [
    ("case", "model"), ("n_params", "params"), ("n_rows", "rows"), "method",
    (lambda r: _failed(r) or f"{r['train_before']:.2e} -> {r['train_after']:.2e} "
     f"({r['train_before'] / max(r['train_after'], 1e-300):.0f}x)", "train rel. error"),
    _ok(lambda r: f"{r['test_before']:.2e} -> {r['test_after']:.2e}", "test rel. error"),
    _ok(lambda r: _gb(r["added_bytes"]), "added GB"),
    _ok(lambda r: _gb(r["estimate_bytes"]), "plan GB"),
    _ok(lambda r: f"{r['added_bytes'] / r['estimate_bytes']:.2f}", "added/plan"),
    _ok(_adapted, "adapted"), ("wall_s:.0f", "time s"),
    _ok(lambda r: r.get("threads", 2), "threads"), _ok(lambda r: _stop(r.get("stop")), "stop"),
]  # fmt: skip
PLAN_COLUMNS = [
    ("case", "model"), ("n_params", "params"), ("n_rows", "rows"), "method",
    (lambda r: "failed" if "error" in r else _gb(r["peak_bytes"]), "planned GB"),
    _ok(lambda r: _gb(r["budget"]), "budget GB"), _ok(_adapted, "adapted"),
]  # fmt: skip


def _write(rec, args):
    runs = [r for r in rec.rows if not r["key"].startswith("plan-")]
    plans = [r for r in rec.rows if r["key"].startswith("plan-")]
    rec.markdown("Large models with default arguments", None, command=args.command, more=[
        "Default refines (`ls.refine(model, data=(x, y), method=...)`, nothing else), each in a "
        "fresh process; *added* is the peak resident memory the refine added, *plan* its "
        "estimate.", md_table(RUN_COLUMNS, runs),
        "`ls.plan` at 5e7 parameters for an 80 GB device (budget: half of 80 GB), float64 "
        "products and vmap batches as on an H100; nothing was run:",
        md_table(PLAN_COLUMNS, plans)])  # fmt: skip


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--only", nargs="*", default=None,
                       help="cases (mlp-1e6, plan-mlp-5e7) or case/method (mlp-1e7/krylov)"),
        p.add_argument("--force", action="store_true", help="redo recorded cases"),
        p.add_argument("--tv-python", default=sys.executable, help="interpreter with torchvision"),
        p.add_argument("--timeout", type=int, default=3000)), argv)  # fmt: skip
    rec = Record("large_models", out=args.out, device="cpu", quick=args.quick)
    for case, method in QUICK if args.quick else RUNS + PLANS:
        key = f"{case}/{method}"
        if (args.only and case not in args.only and key not in args.only) or (
            rec.has(key=key) and not args.force
        ):
            continue
        print(f"{key} ...", flush=True)
        row = rec.add({"key": key, **_run(case, method, args), "threads": args.threads},
                      key=("key",))  # fmt: skip
        print(json.dumps(row)[:600], flush=True)
        _write(rec, args)  # as each case finishes: a stop loses one point
    if rec.rows:
        _write(rec, args)  # the table again (also when nothing was run: --only none)


if __name__ == "__main__":
    main()
