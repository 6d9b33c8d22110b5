"""Which precision makes the Krylov route work on a float32 model? (issue: Krylov by default)

Three float32 cases a user brings: the demo MLP, a user's MLP, and a physics-informed residual
written with ``torch.func``. For each, one-shot LSR with defaults (the reference to beat) and
Krylov LSR (default Auto preconditioner, 300 iterations max) with the products and the solver
in different precisions:

* ``f32``: everything in float32 (0.1's default);
* ``mixed``: float32 products behind a float64 face; LSMR, its scalars and the Nystrom
  preconditioner in float64;
* ``mixed+floor``: the same, with the preconditioner truncated at the float32 noise floor
  (``sigma_i / sigma_1 >= 10 eps32``);
* ``f64``: float64 products (a float64 copy of the model and data);
* ``default``: ``refine(model, ..., method="krylov")`` with every default (0.2: float64
  products for ``data=``, the mixed route with the noise-floor cut for ``residual_fn``, and
  its own stopping rule instead of a fixed 300 iterations).

Writes ``bench/results/precision_cpu.json`` (one row per case and variant, written as soon as
it exists; a rerun skips recorded rows) and a markdown table beside it.

    python bench/bench_precision.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, vmap

import lsr_scale as ls
from lsr_scale.models import MLP
from lsr_scale.operators import JacobianOperator
from lsr_scale.precond import Auto, Nystrom
from lsr_scale.problems import FunctionProblem
from lsr_scale.refine import RefinedModel
from lsr_scale.refine._precision import MixedPrecisionOperator, noise_floor

OUT = Path(__file__).parent / "results" / "precision_cpu"
MAXITER = 300


# ---------------------------------------------------------------------- the three cases
def demo_case():
    prob = FunctionProblem(n_train=2000, seed=0)
    model = prob.make_model()
    prob.train(model, epochs=10000, lr=1e-3, progress=False)
    return {
        "name": "demo MLP 2-32x3-1 (2,241 params), 2,000 rows",
        "model": model,
        "data": (prob.x_train, prob.y_train),
        "residual_fn": None,
        "test": (prob.x_test, prob.y_test),
    }


def _user_target(x):
    return torch.exp(-(x[:, :1] ** 2)) * torch.cos(3 * x[:, 1:]) + 0.5 * x[:, :1] * x[:, 1:]


def user_case():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3000, 2, generator=g) * 2 - 1
    xt = torch.rand(2000, 2, generator=g) * 2 - 1
    torch.manual_seed(1)
    model = MLP((2, 40, 40, 40, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = _user_target(x)
    for _ in range(3000):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
    return {
        "name": "user MLP 2-40x3-1 (3,441 params), 3,000 rows",
        "model": model,
        "data": (x, y),
        "residual_fn": None,
        "test": (xt, _user_target(xt)),
    }


def _exact(x):
    return torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:])


def pinn_residual(model, x_int, x_bc, dtype):
    """-Laplace(u) - f at interior points and u at boundary points, through torch.func."""
    f = (2 * math.pi**2 * _exact(x_int)).reshape(-1).to(dtype)

    def u_scalar(p, pt):
        return functional_call(model, p, (pt[None],)).reshape(())

    def lap(p, pt):
        h = torch.func.hessian(u_scalar, argnums=1)(p, pt)
        return h.diagonal().sum()

    def residual(p):
        r_int = -vmap(lap, in_dims=(None, 0))(p, x_int) - f
        r_bc = functional_call(model, p, (x_bc,)).reshape(-1)
        scale = math.sqrt(x_int.shape[0] / x_bc.shape[0])  # equal block weights
        return torch.cat([r_int, 10.0 * scale * r_bc])

    return residual


def pinn_case():
    g = torch.Generator().manual_seed(2)
    x_int = torch.rand(800, 2, generator=g) * 2 - 1
    s = torch.rand(200, 1, generator=g) * 2 - 1
    one = torch.ones_like(s)
    x_bc = torch.cat(
        [
            torch.cat([s, one], 1),
            torch.cat([s, -one], 1),
            torch.cat([one, s], 1),
            torch.cat([-one, s], 1),
        ]
    )
    xt = torch.rand(2000, 2, generator=g) * 2 - 1
    torch.manual_seed(2)
    model = MLP((2, 64, 64, 64, 64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def u_pt(pt):
        return model(pt[None]).reshape(())

    for _ in range(1500):
        opt.zero_grad()
        lap = vmap(lambda pt: torch.func.hessian(u_pt)(pt).diagonal().sum())(x_int)
        r = -lap - (2 * math.pi**2 * _exact(x_int)).reshape(-1)
        loss = r.square().mean() + 100 * model(x_bc).square().mean()
        loss.backward()
        opt.step()
    return {
        "name": "PINN Poisson, MLP 2-64x4-1 (12,737 params), torch.func Laplacian, 1,600 rows",
        "model": model,
        "data": None,
        "residual_fn": lambda m, dtype: pinn_residual(m, x_int.to(dtype), x_bc.to(dtype), dtype),
        "test": (xt, _exact(xt)),
    }


CASES = {"demo": demo_case, "user": user_case, "pinn": pinn_case}
VARIANTS = ("trained", "subspace", "f32", "mixed", "mixed+floor", "f64", "default")


# ---------------------------------------------------------------------- the variants
def rel(model_or_pred, test, dtype):
    x, y = test
    with torch.no_grad():
        pred = model_or_pred(x.to(dtype))
    return float((pred.double() - y.double()).norm() / y.double().norm())


def jacobian(case, model, dtype):
    if case["residual_fn"] is None:
        x, y = case["data"]
        return JacobianOperator.from_module(model, x.to(dtype), y.to(dtype))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    return JacobianOperator(case["residual_fn"](model, dtype), theta)


def truncate_at_floor(M, floor):
    """Drop the Nystrom directions below ``floor * sigma_1`` (lam = sigma^2)."""
    lam = M.eigenvalues
    keep = int((lam >= (floor**2) * lam[0]).sum())
    if keep < lam.numel():
        M._set_basis(M.U[:, :keep], lam[:keep], None)
        M.rank = keep
    return keep


def krylov(case, variant, gen):
    model = case["model"]
    prod_dtype = torch.float64 if variant == "f64" else torch.float32
    work = copy.deepcopy(model).to(prod_dtype)
    t0 = time.perf_counter()
    J = jacobian(case, work, prod_dtype)
    A = J if variant in ("f32", "f64") else MixedPrecisionOperator(J, torch.float64)
    b = -J.residual.to(A.dtype)
    spec = Auto().choose(A.shape)
    M = spec.build(A, generator=gen)
    kept = None
    if variant == "mixed+floor" and isinstance(spec, Nystrom):
        kept = truncate_at_floor(M, noise_floor(torch.float32))
    res = ls.lsmr(A, b, atol=1e-8, btol=1e-8, conlim=1e12, maxiter=MAXITER, M=M)
    wall = time.perf_counter() - t0
    pred = RefinedModel(work, J.param_names, res.x.to(prod_dtype), {})
    return {
        "rel_l2": rel(pred, case["test"], prod_dtype),
        "wall_s": wall,
        "iterations": res.itn,
        "istop": int(res.istop),
        "products": J.num_matvecs + J.num_rmatvecs,
        "precond": spec.name,
        "precond_rank": getattr(M, "rank", None),
        "precond_rank_kept": kept,
    }


def subspace(case, gen):
    model = case["model"]
    t0 = time.perf_counter()
    if case["residual_fn"] is None:
        r = ls.refine(model, data=case["data"], generator=gen)
    else:
        r = ls.refine(model, residual_fn=case["residual_fn"](model, torch.float32), generator=gen)
    return {
        "rel_l2": rel(r, case["test"], torch.float32),
        "wall_s": time.perf_counter() - t0,
        "iterations": None,
        "rank": r.info["rank"],
        "products": r.info["num_jvp"] + r.info["num_vjp"],
    }


def default_krylov(case, gen):
    model = case["model"]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if case["residual_fn"] is None:
            r = ls.refine(model, data=case["data"], method="krylov", generator=gen)
        else:
            fn = case["residual_fn"](model, torch.float32)
            r = ls.refine(model, residual_fn=fn, method="krylov", generator=gen)
    return {
        "rel_l2": rel(r, case["test"], torch.float32),
        "wall_s": time.perf_counter() - t0,
        "iterations": r.info["iterations"],
        "istop": int(r.info["solver"].istop),
        "stop": r.info["stop"],
        "warned_maxiter": any("maxiter" in str(w.message) for w in caught),
        "products": r.info["num_jvp"] + r.info["num_vjp"],
        "precond": r.info["preconditioner"]["name"],
        "precond_rank": r.info["preconditioner"]["rank"],
        "precision": r.info["precision"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = OUT.with_suffix(".json")
    doc = json.loads(path.read_text()) if path.exists() else {"rows": []}
    doc["device"] = f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s)"
    doc["maxiter"] = MAXITER
    done = {(r["case"], r["variant"]) for r in doc["rows"]}
    for key in args.cases:
        if all((key, v) in done for v in VARIANTS):
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        case = CASES[key]()
        print(f"{key}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
        for variant in VARIANTS:
            if (key, variant) in done:
                continue
            gen = torch.Generator().manual_seed(0)
            if variant == "trained":
                out = {"rel_l2": rel(case["model"], case["test"], torch.float32)}
            elif variant == "subspace":
                out = subspace(case, gen)
            elif variant == "default":
                out = default_krylov(case, gen)
            else:
                out = krylov(case, variant, gen)
            row = {"case": key, "name": case["name"], "variant": variant, **out}
            print(json.dumps(row), flush=True)
            doc["rows"].append(row)
            path.write_text(json.dumps(doc, indent=1))
    write_markdown(doc)


def write_markdown(doc):
    lines = [
        "# Krylov precision on float32 models",
        "",
        f"Device: {doc['device']}. Krylov: LSMR, default Auto preconditioner (Nystrom rank "
        f"300 or half the smaller side), at most {doc['maxiter']} iterations, atol=btol=1e-8. "
        "Command: `python bench/bench_precision.py --threads 1`.",
        "",
        "| case | variant | test rel. L2 | iterations | stop | products | precond rank "
        "| wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        rank = r.get("precond_rank_kept") or r.get("precond_rank") or r.get("rank") or ""
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['rel_l2']:.3e} | {r.get('iterations') or ''} "
            f"| {_stop(r)} | {r.get('products') or ''} | {rank} | {r.get('wall_s', 0):.1f} |"
        )
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _stop(r):
    if "stop" in r:
        return r["stop"].split(":")[0]
    return "maxiter" if r.get("istop") == 7 else ""


if __name__ == "__main__":
    main()
