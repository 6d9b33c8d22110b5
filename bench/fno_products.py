"""The products of neuraloperator's FNO, before and after the linearization fix (issue 20).

The FNO of the report (``FNO(n_modes=(16,), hidden_channels=32, n_layers=4)``, eval mode,
20 inputs of shape (1, 128), float32). For each way of taking products: the normalized dot
test ``|<u, J v> - <J^T u, v>| / (||u|| ||J v|| + ||J^T u|| ||v||)`` over three draws. Then a
``refine(..., method=ls.Krylov())`` with every default on smooth targets: the linearized
training loss before and after, and the train error of the predictor. Writes
``bench/results/fno_products_cpu.{json,md}``.

    python bench/fno_products.py --threads 1
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from torch import func as tfunc

import lsr_scale as ls
from lsr_scale.bench._harness import device_name, write_files

OUT = Path(__file__).resolve().parent / "results"


def _dot(J, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(J.shape[0], generator=g)
    v = torch.randn(J.shape[1], generator=g)
    Jv, Jtu = J.matvec(v), J.rmatvec(u)
    return float(abs(u @ Jv - Jtu @ v) / (u.norm() * Jv.norm() + v.norm() * Jtu.norm()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from neuralop.models import FNO

    torch.manual_seed(0)
    model = FNO(n_modes=(16,), hidden_channels=32, in_channels=1, out_channels=1, n_layers=4)
    model = model.eval()
    g = torch.Generator().manual_seed(1)
    U = torch.randn(20, 1, 128, generator=g)
    V = torch.sin(torch.cumsum(U, dim=-1) / 8)
    rows = []
    ways = {
        "default (our linearization, self-checked)": dict(),
        "fresh torch.func.jvp (linearize=False)": dict(linearize=False),
        "double-VJP": dict(jvp="double_vjp"),
    }
    for label, kw in ways.items():
        J = ls.JacobianOperator.from_module(model, U, V, **kw)
        rows.append(dict(products=label, dot=[_dot(J, s) for s in range(3)]))
    # torch's own linearize, which 0.2.0 used: swapped in for this row only
    import lsr_scale.operators._forward as fwd

    ours = fwd.linearize
    fwd.linearize = lambda fn, p: tfunc.linearize(fn, p)[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            J = ls.JacobianOperator.from_module(model, U, V, self_check=False)
            rows.append(
                dict(products="torch.func.linearize (0.2.0)", dot=[_dot(J, s) for s in range(3)])
            )
    finally:
        fwd.linearize = ours
    t0 = time.perf_counter()
    refined = ls.refine(model, data=(U, V), method=ls.Krylov(), progress_bar=False)
    wall = time.perf_counter() - t0
    info = refined.info
    with torch.no_grad():
        before = float((model(U) - V).norm() / V.norm())
    after = float((refined(U) - V).norm() / V.norm())
    krylov = dict(
        loss_before=info["loss_before"],
        loss_linearized=info["loss_linearized"],
        iterations=info.get("iterations"),
        stop=str(info.get("stop")),
        train_rel_before=before,
        train_rel_after=after,
        wall_s=wall,
        product_check=info["product_check"],
    )
    payload = dict(device=device_name("cpu", args.threads), rows=rows, krylov=krylov)
    body = ["| products | normalized dot-test error (3 draws) |", "|---|---|"]
    body += [f"| {r['products']} | {', '.join(f'{d:.1e}' for d in r['dot'])} |" for r in rows]
    body += [
        "",
        "Krylov defaults on the same FNO (random init, 20 smooth targets):",
        "",
        "| linearized loss before | after | iterations | train rel. error before | "
        "after | time (s) |",
        "|---|---|---|---|---|---|",
        f"| {krylov['loss_before']:.4g} | {krylov['loss_linearized']:.4g} | "
        f"{krylov['iterations']} | {before:.3f} | {after:.3f} | {wall:.1f} |",
    ]
    print(write_files("fno_products_cpu", payload, "FNO products",
                "python bench/fno_products.py --threads 1", body, out=OUT))  # fmt: skip


if __name__ == "__main__":
    main()
