"""Profile of the guide's recommended ``Subspace(rank="auto")`` + validation, in float32 and
float64, against the default fixed rank, on a small CNN (scikit-learn's digits).

Issue 16 measured the recommended call in float64 at more than 12 minutes where float32 took
193 s. This profiles each phase (``info["times"]``) on a 28k-parameter CNN trained briefly
on the 8x8 digits (one-hot targets, squared error), all in one run, so the ratios hold
whatever the machine's load:

    python bench/profile_rank_auto.py --threads 1 [--train 600]
    python bench/profile_rank_auto.py --quick   # 100 digits, 30 Adam steps (_quick files)

Writes ``bench/results/profile_rank_auto_cpu.{json,md}``. Needs scikit-learn (its digits
ship inside the package).
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

import lsr_scale as ls
from lsr_scale.bench._harness import Record, parse_script


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
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--train", type=int, default=600),
        p.add_argument("--val", type=int, default=300)), argv)  # fmt: skip
    n_train, n_val = (100, 50) if args.quick else (args.train, args.val)
    (x, y), (xv, yv), (xt, yt) = digits(n_train, n_val)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30 if args.quick else 300):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    model.eval()

    def acc(f, dtype=torch.float32):
        with torch.no_grad():
            return float((f(xt.to(dtype)).argmax(1) == yt.argmax(1)).float().mean())

    auto = dict(method=ls.Subspace(rank="auto"), validation=(xv, yv))
    runs = {
        "fixed rank, float32": dict(method=ls.Subspace()),
        "rank='auto', float32": auto,
        "fixed rank, float64": dict(method=ls.Subspace(), dtype=torch.float64),
        "rank='auto', float64": dict(auto, dtype=torch.float64),
    }
    rec = Record("profile_rank_auto", out=args.out, device="cpu", quick=args.quick)
    for name, kw in runs.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = ls.refine(model, data=(x, y), generator=torch.Generator().manual_seed(0),
                          progress_bar=False, **kw)  # fmt: skip
        info = r.info
        row = rec.add({
            "key": name, "wall_s": time.perf_counter() - t0, "times": info["times"],
            "rank": info["rank"], "test_accuracy": acc(r, kw.get("dtype", torch.float32)),
            "loss_linearized": info["loss_linearized"], "num_jvp": info["num_jvp"],
            "num_vjp": info["num_vjp"],
        }, key=("key",))  # fmt: skip
        print(name, row, flush=True)
    base = rec.get(key="fixed rank, float32")["wall_s"]
    intro = (f"CNN, {sum(q.numel() for q in model.parameters()):,} parameters, {n_train} "
             f"training digits ({10 * n_train:,} residual rows), {n_val} for validation; "
             f"trained accuracy {acc(model):.3f}.")  # fmt: skip
    phases = [(lambda r, k=k: f"{r['times'].get(k, 0):.1f}", f"{k.replace('_', ' ')} s")
              for k in ("linearize", "range_finder", "reduced")]  # fmt: skip
    print(rec.markdown(
        "Subspace(rank='auto') + validation, float32 and float64, on a small CNN",
        [("key", "call"), ("wall_s:.1f", "wall s"),
         (lambda r: f"{r['wall_s'] / base:.2f}", "/ fixed float32"), *phases, ("rank:d", "rank"),
         (lambda r: f"{r['num_jvp']}+{r['num_vjp']}", "JVPs+VJPs"),
         ("test_accuracy:.3f", "test accuracy")],
        command=args.command, more=[intro]))  # fmt: skip


if __name__ == "__main__":
    main()
