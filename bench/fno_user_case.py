"""The issue's FNO case: the linearized loss that rose, reproduced and gone.

neuraloperator 2.0's ``FNO(n_modes=(16,), hidden_channels=32, n_layers=4)`` (86,817 real
parameters) trained in float32 on ``BurgersProblem(dataset="viscid", n_train=200)`` by Adam
(lr 3e-3, cosine decay, full batch, ``--steps`` steps, seed 0; weights kept as
``bench/results/fno_user_case.pt``) to about the report's 2e-2. Then
``refine(model, data=..., method=ls.Krylov())`` on the first ``--functions`` training
functions, twice:

* ``torch.func.linearize (0.2.0)``: the JVPs of torch's own linearization, which 0.2.0 used
  (swapped in for this row; issue 20 found it wrong on this model);
* ``default``: the products of this version (our functionalized linearization, self-checked).

Each row: the normalized dot test of the products, the linearized loss before and after as
``info`` reports it and as recomputed here from a fresh ``torch.func.jvp``, the stop rule,
the iterations, and the train/test error. Writes ``bench/results/fno_user_case_cpu.{json,md}``.

    python bench/fno_user_case.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from fno_reference import ISSUE_FNO, make_fno, rel, train  # bench/ is on sys.path when run
from torch import func as tfunc

import lsr_scale as ls
from lsr_scale.bench._harness import device_name, write_files
from lsr_scale.operators._params import to_precision

OUT = Path(__file__).resolve().parent / "results"


def trained_model(x, y, steps):
    path = OUT / "fno_user_case.pt"
    model = make_fno(**ISSUE_FNO)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model, x, y, steps)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save(state, path)
    return model.eval()


def dot(J, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(J.shape[0], generator=g, dtype=J.dtype)
    v = torch.randn(J.shape[1], generator=g, dtype=J.dtype)
    Jv, Jtu = J.matvec(v), J.rmatvec(u)
    return float(abs(u @ Jv - Jtu @ v) / (u.norm() * Jv.norm() + v.norm() * Jtu.norm()))


def run(model, x, y, xt, yt, label, products=None):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refined = ls.refine(model, data=(x, y), method=ls.Krylov(), progress_bar=False,
                            products=products,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    wall = time.perf_counter() - t0
    info = refined.info
    # the loss recomputed by a fresh torch.func.jvp of the float64 copy (no linearization)
    m64 = to_precision(copy.deepcopy(model), torch.float64)
    J = ls.JacobianOperator.from_module(m64, x.double(), y.double(), linearize=False)
    lin = J.matvec(refined.delta.double()) + J.residual
    with torch.no_grad():
        return dict(
            products=label, dot=dot(J_used(model, x, y, label)),
            loss_before=info["loss_before"], loss_reported=info["loss_linearized"],
            loss_fresh_jvp=0.5 * float(lin.norm() ** 2), stop=info["stop"],
            iterations=info["iterations"], train_before=rel(model(x), y),
            train_after=rel(refined(x), y), test_before=rel(model(xt), yt),
            test_after=rel(refined(xt), yt), wall_s=wall,
        )  # fmt: skip


def J_used(model, x, y, label):
    m64 = to_precision(copy.deepcopy(model), torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ls.JacobianOperator.from_module(m64, x.double(), y.double(), self_check=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--functions", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = ls.problems.BurgersProblem(n_train=200, n_test=100, dataset="viscid")
    X, Y = prob.u_train[:, None], prob.s_train[:, None]
    xt, yt = prob.u_test[:, None], prob.s_test[:, None]
    model = trained_model(X, Y, args.steps)
    x, y = X[: args.functions], Y[: args.functions]
    import lsr_scale.operators._forward as fwd

    ours = fwd.linearize
    rows = []
    fwd.linearize = lambda fn, p: tfunc.linearize(fn, p)[1]
    try:  # 0.2.0's products, with the self-check that now catches them turned off
        old = ls.Products(self_check=False)
        rows.append(run(model, x, y, xt, yt, "torch.func.linearize (0.2.0)", old))
    finally:
        fwd.linearize = ours
    rows.append(run(model, x, y, xt, yt, "default (this version)"))
    payload = dict(device=device_name("cpu", args.threads), functions=args.functions,
                   rows_n=args.functions * 128, steps=args.steps, rows=rows)  # fmt: skip
    body = [
        f"FNO(n_modes=(16,), hidden_channels=32, n_layers=4), 86,817 real parameters, "
        f"Adam {args.steps} steps on 200 viscid Burgers functions; refined on the first "
        f"{args.functions} ({args.functions * 128} rows) with `ls.Krylov()` defaults.",
        "",
        "| products | dot test | linearized loss before | after (info) | after (fresh JVP) "
        "| stop | iterations | train rel. error before -> after | test before -> after "
        "| time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(
            f"| {r['products']} | {r['dot']:.1e} | {r['loss_before']:.4g} | "
            f"{r['loss_reported']:.4g} | {r['loss_fresh_jvp']:.4g} | {r['stop']} | "
            f"{r['iterations']} | {r['train_before']:.3e} -> {r['train_after']:.3e} | "
            f"{r['test_before']:.3e} -> {r['test_after']:.3e} | {r['wall_s']:.1f} |"
        )
    print(write_files("fno_user_case_cpu", payload, "FNO: the issue's case",
                f"python bench/fno_user_case.py --threads 1 --functions {args.functions}",
                body, out=OUT))  # fmt: skip


if __name__ == "__main__":
    main()
