"""Speed of the FNO's Jacobian products against a forward and backward pass of the same model.

neuraloperator 2.0's ``FNO(n_modes=(16,), hidden_channels=32, n_layers=4)`` (86,817 real
parameters), eval mode, 200 inputs of shape (1, 128) (25,600 output rows, the issue's
size), in float32 and in the float64 copy ``Krylov(precision="auto")`` takes products
in. In one run, each timed as the median of ``--repeat`` calls after a warm-up:

* ``fwd+bwd``: ``model(x)``, then ``torch.autograd.grad`` of ``<w, model(x)>`` with respect
  to every parameter;
* ``pair``: one JVP and one VJP of ``ls.JacobianOperator.from_module(model, x, y)`` (the
  default products: ``refine``'s), and their ratio to ``fwd+bwd``;
* ``block/col``: a 16-column ``matmat`` and ``rmatmat`` (how the preconditioner build takes
  them) per column pair.

Rows are merged into ``bench/results/fno_speed_cpu.json`` under ``--label`` (e.g. "before",
"after"), so the before and after of a change sit in one file.

    python bench/fno_speed.py --threads 1 --label after
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch
from fno_reference import ISSUE_FNO, make_fno  # bench/ is on sys.path when run

import lsr_scale as ls
from lsr_scale.bench._harness import device_name, timeit, write_files
from lsr_scale.operators._params import to_precision

OUT = Path(__file__).resolve().parent / "results"

STEM = "fno_speed_cpu"


def measure(model, x, repeat, block=16, **jac_kw):
    dtype = x.dtype
    g = torch.Generator().manual_seed(1)
    y = torch.randn(x.shape, generator=g, dtype=dtype)
    params = [p for p in model.parameters()]
    w = torch.randn(x.shape, generator=g, dtype=dtype)

    def fwd_bwd():
        out = model(x)
        torch.autograd.grad((out * w).sum(), params)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        J = ls.JacobianOperator.from_module(model, x, y, **jac_kw)
    m = J.shape[1]
    v = torch.randn(m, generator=g, dtype=dtype)
    u = torch.randn(J.shape[0], generator=g, dtype=dtype)
    V = torch.randn(m, block, generator=g, dtype=dtype)
    Uc = torch.randn(J.shape[0], block, generator=g, dtype=dtype)

    def pair():
        J.matvec(v)
        J.rmatvec(u)

    def blocks():
        J.matmat(V)
        J.rmatmat(Uc)

    t_fb = timeit(fwd_bwd, repeat=repeat)
    t_pair = timeit(pair, repeat=repeat)
    t_jvp = timeit(lambda: J.matvec(v), repeat=repeat)
    t_vjp = timeit(lambda: J.rmatvec(u), repeat=repeat)
    t_block = timeit(blocks, repeat=max(1, repeat // 3)) / block
    return dict(
        dtype=str(dtype).replace("torch.", ""), n_rows=J.shape[0], n_params=m,
        fwd_bwd_s=t_fb, jvp_s=t_jvp, vjp_s=t_vjp, pair_s=t_pair, ratio=t_pair / t_fb,
        block_pair_per_col_s=t_block, block_ratio=t_block / t_fb,
        linearized=J.uses_linearize, batching=J.batching if hasattr(J, "batching") else None,
    )  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="after")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--functions", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = make_fno(**ISSUE_FNO).eval()
    x = torch.randn(args.functions, 1, 128, generator=torch.Generator().manual_seed(0))
    path = OUT / f"{STEM}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in rows if r["label"] != args.label]
    from torch import func as tfunc

    import lsr_scale.operators._forward as fwd

    ours = fwd.linearize
    routes = {
        "default (loop of single products, our linearization)": dict(),
        "vmap over the 16 columns": dict(batching="vmap"),
        "fresh torch.func.jvp per product": dict(linearize=False),
        "torch.func.linearize (0.2.0; wrong products)": dict(self_check=False),
    }
    for dtype in (torch.float32, torch.float64):
        mdl = model if dtype == torch.float32 else to_precision(copy.deepcopy(model), dtype)
        for route, kw in routes.items():
            if route.startswith("torch.func.linearize"):
                fwd.linearize = lambda fn, p: tfunc.linearize(fn, p)[1]
            try:
                r = measure(mdl, x.to(dtype), args.repeat, **kw)
            finally:
                fwd.linearize = ours
            r.update(label=args.label, route=route)
            rows.append(r)
            print(json.dumps(r), flush=True)
    body = [
        "FNO(n_modes=(16,), hidden_channels=32, n_layers=4), eval, 200 inputs (1, 128): "
        "25,600 rows. Times are medians (ms); ratios are to one forward+backward pass of "
        "the same model on the same batch, measured in the same run.",
        "",
        "| label | products | dtype | fwd+bwd (ms) | JVP (ms) | VJP (ms) | JVP+VJP (ms) | ratio "
        "| 16-col block, per JVP+VJP (ms) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(
            f"| {r['label']} | {r.get('route', 'default')} | {r['dtype']} | "
            f"{1e3 * r['fwd_bwd_s']:.1f} | "
            f"{1e3 * r['jvp_s']:.1f} | {1e3 * r['vjp_s']:.1f} | {1e3 * r['pair_s']:.1f} | "
            f"{r['ratio']:.2f} | {1e3 * r['block_pair_per_col_s']:.1f} | "
            f"{r['block_ratio']:.2f} |"
        )
    payload = dict(device=device_name("cpu", args.threads), rows=rows)
    command = "python bench/fno_speed.py --threads 1 --label <before|after>"
    print(write_files(STEM, payload, "FNO product speed", command, body, out=OUT))


if __name__ == "__main__":
    main()
