"""Profile of the guide's recommended ``Subspace(rank="auto")`` + validation, in float32 and
float64, against the default fixed rank, on a small CNN (scikit-learn's digits).

Issue 16 measured the recommended call in float64 at more than 12 minutes where float32 took
193 s. This profiles each phase (``info["times"]``) on a 28k-parameter CNN trained briefly
on the 8x8 digits (one-hot targets, squared error), all in one run, so the ratios hold
whatever the machine's load:

    python bench/profile_rank_auto.py --threads 1 [--train 600]

Writes ``bench/results/profile_rank_auto_cpu.{json,md}``. Needs scikit-learn (its digits
ship inside the package).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _record import cpu_device, write  # noqa: E402

import lsr_scale as ls  # noqa: E402


def digits(n_train: int, n_val: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.nn.functional.one_hot(torch.tensor(d.target), 10).float()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    te = perm[n_train + n_val :]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.GELU(), nn.Flatten(), nn.Linear(32 * 16, 48), nn.GELU(), nn.Linear(48, 10),
    )  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    (x, y), (xv, yv), (xt, yt) = digits(args.train, args.val)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    model.eval()

    def acc(f, dtype=torch.float32):
        with torch.no_grad():
            return float((f(xt.to(dtype)).argmax(1) == yt.argmax(1)).float().mean())

    runs = {
        "fixed rank, float32": dict(method=ls.Subspace()),
        "rank='auto', float32": dict(method=ls.Subspace(rank="auto"), validation=(xv, yv)),
        "fixed rank, float64": dict(method=ls.Subspace(), dtype=torch.float64),
        "rank='auto', float64": dict(
            method=ls.Subspace(rank="auto"), validation=(xv, yv), dtype=torch.float64
        ),
    }
    rows = {}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ls.refine(model, data=(x, y), generator=torch.Generator().manual_seed(0),
                          progress_bar=False, **kw)  # fmt: skip
        wall = time.perf_counter() - t0
        dt = kw.get("dtype", torch.float32)
        rows[name] = {
            "wall_s": wall, "times": r.info["times"], "rank": r.info["rank"],
            "test_accuracy": acc(r, dt), "loss_linearized": r.info["loss_linearized"],
            "num_jvp": r.info["num_jvp"], "num_vjp": r.info["num_vjp"],
        }  # fmt: skip
        print(name, rows[name], flush=True)
    base = rows["fixed rank, float32"]["wall_s"]
    body = [
        f"CNN, {sum(q.numel() for q in model.parameters()):,} parameters, {args.train} "
        f"training digits ({10 * args.train:,} residual rows), {args.val} for validation; "
        f"trained accuracy {acc(model):.3f}.",
        "",
        "| call | wall s | / fixed float32 | linearize s | range finder s | reduced s | rank | "
        "JVPs+VJPs | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        t = r["times"]
        body.append(
            f"| {name} | {r['wall_s']:.1f} | {r['wall_s'] / base:.2f} | "
            f"{t.get('linearize', 0):.1f} | {t.get('range_finder', 0):.1f} | "
            f"{t.get('reduced', 0):.1f} | {r['rank']} | {r['num_jvp']}+{r['num_vjp']} | "
            f"{r['test_accuracy']:.3f} |"
        )
    print(write("profile_rank_auto_cpu", {"device": cpu_device(args.threads), "rows": rows},
                "Subspace(rank='auto') + validation, float32 and float64, on a small CNN",
                f"python bench/profile_rank_auto.py --threads {args.threads}", body))  # fmt: skip


if __name__ == "__main__":
    main()
