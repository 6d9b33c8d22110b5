"""What the product self-check costs against a default refine (issue: silent wrong products).

On the demo problem (``lsr-scale demo``'s MLP [2, 32x3, 1] on 2,000 points, trained with
Adam), times the self-check alone (``check_products`` on an operator built without it: three
JVPs and one VJP) and default refines with each method, in one run, and reports the check as
a fraction of each refine. Writes ``bench/results/self_check_<device>.{json,md}``.

    python bench/bench_self_check.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _record import cpu_device, write  # bench/ is on sys.path when run

import lsr_scale as ls
from lsr_scale.operators._jacobian_checks import check_products
from lsr_scale.problems import FunctionProblem


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2000, help="Adam epochs for the demo MLP")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = FunctionProblem(n_train=2000, widths=(2, 32, 32, 32, 1), seed=0)
    model = prob.make_model()
    prob.train(model, epochs=args.epochs, lr=3e-3, progress=False)
    data = (prob.x_train, prob.y_train)
    rows = []
    for name, method in (("subspace", ls.Subspace()), ("krylov", ls.Krylov())):
        refined = ls.refine(
            model,
            data=data,
            method=method,
            progress_bar=False,
            generator=torch.Generator().manual_seed(0),
        )
        total = refined.info["times"]["total"]
        # the operator refine built: the method's product dtype, on a copy of the model
        dtype = getattr(torch, refined.info["product_dtype"].removeprefix("torch."))
        work = copy.deepcopy(model).to(dtype)
        x, y = (t.to(dtype) for t in data)
        J = ls.JacobianOperator.from_module(work, x, y, self_check=False)
        check = _best(lambda J=J: check_products(J, "demo", J._double_vjp_backend), args.repeats)
        rows.append(
            dict(
                method=name,
                product_dtype=refined.info["product_dtype"],
                refine_s=total,
                check_s=check,
                fraction=check / total,
                num_jvp=refined.info["num_jvp"],
                num_vjp=refined.info["num_vjp"],
            )
        )
        print(
            f"{name}: refine {total:.2f} s, self-check {check * 1e3:.1f} ms "
            f"({100 * check / total:.2f}%)",
            flush=True,
        )
    payload = dict(device=cpu_device(args.threads), epochs=args.epochs, rows=rows)
    body = [
        "| method (defaults) | products in | refine (s) | self-check (ms) | fraction |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(
            f"| {r['method']} | {r['product_dtype'].removeprefix('torch.')} | "
            f"{r['refine_s']:.2f} | {1e3 * r['check_s']:.1f} | "
            f"{100 * r['fraction']:.2f}% |"
        )
    write("self_check_cpu", payload, "Product self-check cost",
          "python bench/bench_self_check.py --threads 1", body)  # fmt: skip


if __name__ == "__main__":
    main()
