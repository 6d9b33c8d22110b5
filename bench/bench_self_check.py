"""What the product self-check costs against a default refine (issue: silent wrong products).

On the demo problem (``lsr-scale demo``'s MLP [2, 32x3, 1] on 2,000 points, trained with
Adam), times the self-check alone (``check_products`` on an operator built without it: three
JVPs and one VJP) and default refines with each method, in one run, and reports the check as
a fraction of each refine. Writes ``bench/results/self_check_<device>.{json,md}``.

    python bench/bench_self_check.py --threads 1
"""

from __future__ import annotations

import copy

import torch

import lsr_scale as ls
from lsr_scale.bench._harness import Record, parse_script, timeit
from lsr_scale.operators._jacobian_checks import check_products
from lsr_scale.problems import FunctionProblem


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--epochs", type=int, default=2000, help="Adam epochs for the demo MLP"),
        p.add_argument("--repeats", type=int, default=5)), argv)  # fmt: skip
    epochs = 100 if args.quick else args.epochs
    rec = Record(
        "self_check", out=args.out, device="cpu", quick=args.quick, meta={"epochs": epochs}
    )
    prob = FunctionProblem(n_train=2000, widths=(2, 32, 32, 32, 1), seed=0)
    model = prob.make_model()
    prob.train(model, epochs=epochs, lr=3e-3, progress=False)
    data = (prob.x_train, prob.y_train)
    for name, method in (("subspace", ls.Subspace()), ("krylov", ls.Krylov())):
        refined = ls.refine(model, data=data, method=method, progress_bar=False,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        info = refined.info
        # the operator refine built: the method's product dtype, on a copy of the model
        dtype = getattr(torch, info["product_dtype"].removeprefix("torch."))
        x, y = (t.to(dtype) for t in data)
        J = ls.JacobianOperator.from_module(copy.deepcopy(model).to(dtype), x, y, self_check=False)
        check = timeit(lambda J=J: check_products(J, "demo", J._double_vjp_backend),
                       repeat=args.repeats, device="cpu")  # fmt: skip
        total = info["times"]["total"]
        rec.add(dict(method=name, product_dtype=info["product_dtype"], refine_s=total,
                     check_s=check, fraction=check / total, num_jvp=info["num_jvp"],
                     num_vjp=info["num_vjp"]), key=("method",))  # fmt: skip
        print(f"{name}: refine {total:.2f} s, self-check {check * 1e3:.1f} ms "
              f"({100 * check / total:.2f}%)", flush=True)  # fmt: skip
    rec.markdown("Product self-check cost", [
        ("method", "method (defaults)"),
        (lambda r: r["product_dtype"].removeprefix("torch."), "products in"),
        ("refine_s:.2f", "refine (s)"), (lambda r: f"{1e3 * r['check_s']:.1f}", "self-check (ms)"),
        (lambda r: f"{100 * r['fraction']:.2f}%", "fraction"),
    ], command=args.command)  # fmt: skip


if __name__ == "__main__":
    main()
