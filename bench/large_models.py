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

The ResNet cases need torchvision (matching the installed torch); ``--tv-python`` names an
interpreter that has it (with this checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import OUT, cpu_device, write  # noqa: E402

STEM = "large_models_cpu"
ROOT = Path(__file__).resolve().parent.parent

# One refine in a fresh process: build, train briefly, refine with defaults, measure.
_CHILD = r"""
import json, math, sys, time, warnings
import torch
torch.set_num_threads(int(sys.argv[3]))
import lsr_scale as ls
from lsr_scale._utils import PeakMemory

case, method = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)

def mlp(width, rows):
    L = torch.nn.Linear
    net = torch.nn.Sequential(L(2, width), torch.nn.Tanh(), L(width, width), torch.nn.Tanh(),
                              L(width, 1))
    def data(k):
        x = torch.rand(k, 2, generator=g) * 2 - 1
        return x, (torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:]))
    return net, data(rows), data(2000), 200, 1e-4

def resnet(rows):
    import torchvision
    net = torchvision.models.resnet18(num_classes=10)
    w = torch.randn(3 * 32 * 32, 10, generator=g) / 55.0
    def data(k):
        x = torch.randn(k, 3, 32, 32, generator=g)
        return x, torch.tanh(x.reshape(k, -1) @ w)
    return net, data(rows), data(256), 100, 1e-3

make = {"mlp-1e7": lambda: mlp(3162, 100), "mlp-1e6": lambda: mlp(998, 1000),
        "resnet18": lambda: resnet(32)}[case]
net, (x, y), (xt, yt), steps, lr = make()
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
           train_before=rel(net, x, y), test_before=rel(net, xt, yt))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with PeakMemory() as pm:
        r = ls.refine(net, data=(x, y), method=method, generator=g, progress_bar=True)
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
)
print("RESULT " + json.dumps(row))
"""

# ls.plan at 5e7 parameters with an 80 GB device's budget (nothing of the problem's size
# is allocated: one forward pass of a few rows measures the activations).
_PLAN = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
import lsr_scale as ls
from lsr_scale.refine._plan import default_budget
case, method = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
if case == "plan-mlp-5e7":
    L = torch.nn.Linear
    W = 7071
    net = torch.nn.Sequential(L(2, W), torch.nn.Tanh(), L(W, W), torch.nn.Tanh(), L(W, 1))
    x, y = torch.rand(500, 2), torch.rand(500, 1)
else:
    import torchvision
    net = torchvision.models.resnet152(num_classes=10).eval()
    x, y = torch.randn(64, 3, 32, 32), torch.randn(64, 10)
budget = default_budget(free=80e9)
# as refine would on an H100 (float64 products: sm_90 runs them at half rate; vmap batches)
p = ls.plan(net, data=(x, y), method=method, memory_budget=budget,
            products=ls.Products(batching="vmap"))
print("RESULT " + json.dumps(dict(
    case=case, method=method, n_params=sum(q.numel() for q in net.parameters()),
    n_rows=int(y.numel()), budget=budget, peak_bytes=p.peak_bytes, parts=p.parts,
    adapted=list(p.adapted), settings=repr(p.method), notes=list(p.notes))))
"""

RUNS = [("mlp-1e6", "krylov"), ("mlp-1e6", "subspace"), ("mlp-1e7", "subspace"),
        ("mlp-1e7", "krylov"), ("resnet18", "subspace"), ("resnet18", "krylov")]  # fmt: skip
PLANS = [("plan-mlp-5e7", "krylov"), ("plan-mlp-5e7", "subspace"),
         ("plan-resnet152", "krylov"), ("plan-resnet152", "subspace")]  # fmt: skip


def _key(case, method):
    return f"{case}/{method}"


def _load():
    path = OUT / f"{STEM}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else {}


def _child(code, case, method, args):
    python = args.tv_python if "resnet" in case else sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [python, "-c", code, case, method, str(args.threads)],
        capture_output=True, text=True, env=env, timeout=args.timeout,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"case": case, "method": method, "error": out.stderr[-1500:],
                "wall_s": time.perf_counter() - t0}  # fmt: skip
    row = json.loads(lines[-1][len("RESULT ") :])
    # the progress lines (stderr is not a terminal: one every 10 s) show the phases' pace
    row["progress_tail"] = [ln for ln in out.stderr.splitlines() if "refine (" in ln][-3:]
    return row


def _stop(text):
    """The rule that ended a Krylov solve: "stalled", "validation", or the solver's istop."""
    head = (text or "").split(":")[0]
    return f"istop {head}" if head.isdigit() else head


def _gb(x):
    return f"{x / 1e9:.2f}"


def _table(rows, device):
    runs = [r for k, r in rows.items() if not k.startswith("plan-")]
    plans = [r for k, r in rows.items() if k.startswith("plan-")]
    body = [
        "Default refines (`ls.refine(model, data=(x, y), method=...)`, nothing else), each in a "
        "fresh process; *added* is the peak resident memory the refine added, *plan* its "
        "estimate.",
        "",
        "| model | params | rows | method | train rel. error | test rel. error | added GB | "
        "plan GB | added/plan | adapted | time s | threads | stop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            body.append(f"| {r['case']} | | | {r['method']} | failed: "
                        f"{r['error'].splitlines()[-1][:80]} | | | | | | | | |")  # fmt: skip
            continue
        adapted = "; ".join(f"{c['setting']} {c['from']} -> {c['to']}" for c in r["adapted"])
        body.append(
            f"| {r['case']} | {r['n_params']:,} | {r['n_rows']:,} | {r['method']} | "
            f"{r['train_before']:.2e} -> {r['train_after']:.2e} "
            f"({r['train_before'] / max(r['train_after'], 1e-300):.0f}x) | "
            f"{r['test_before']:.2e} -> {r['test_after']:.2e} | {_gb(r['added_bytes'])} | "
            f"{_gb(r['estimate_bytes'])} | {r['added_bytes'] / r['estimate_bytes']:.2f} | "
            f"{adapted or 'none'} | {r['wall_s']:.0f} | {r.get('threads', 2)} | "
            f"{_stop(r.get('stop'))} |"
        )
    body += [
        "",
        "`ls.plan` at 5e7 parameters for an 80 GB device (budget: half of 80 GB), "
        "float64 products and vmap batches as on an H100; nothing was run:",
        "",
        "| model | params | rows | method | planned GB | budget GB | adapted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in plans:
        if "error" in r:
            body.append(f"| {r['case']} | | | {r['method']} | failed | | |")
            continue
        adapted = "; ".join(f"{c['setting']} {c['from']} -> {c['to']}" for c in r["adapted"])
        body.append(
            f"| {r['case']} | {r['n_params']:,} | {r['n_rows']:,} | {r['method']} | "
            f"{_gb(r['peak_bytes'])} | {_gb(r['budget'])} | {adapted or 'none'} |"
        )
    return body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="cases (mlp-1e6, plan-mlp-5e7) or case/method (mlp-1e7/krylov)",
    )
    p.add_argument("--force", action="store_true", help="redo recorded cases")
    p.add_argument("--tv-python", default=sys.executable, help="interpreter with torchvision")
    p.add_argument("--timeout", type=int, default=3000)
    args = p.parse_args(argv)
    rows = _load()
    device = cpu_device(args.threads).split(",")[0] + ")"  # threads: per row
    todo = [(c, m, _CHILD) for c, m in RUNS] + [(c, m, _PLAN) for c, m in PLANS]
    for case, method, code in todo:
        key = _key(case, method)
        if (args.only and case not in args.only and key not in args.only) or (
            key in rows and not args.force
        ):
            continue
        print(f"{key} ...", flush=True)
        rows[key] = {**_child(code, case, method, args), "threads": args.threads}
        print(json.dumps(rows[key])[:600], flush=True)
        _write(rows, device)  # as each case finishes: a stop loses one point
    if rows:
        _write(rows, device)  # the table again (also when nothing was run: --only none)


def _write(rows, device):
    write(STEM, {"device": device, "rows": rows}, "Large models with default arguments",
          "python bench/large_models.py --threads 1 --tv-python /tmp/tvenv/bin/python",
          _table(rows, device))  # fmt: skip


if __name__ == "__main__":
    main()
