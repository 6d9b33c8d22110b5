"""``lsr-scale bench precision``: which precision makes the Krylov route work on a float32
model?

Three float32 cases a user brings: the demo MLP, a user's MLP, and a physics-informed
residual written with ``torch.func``. For each: the trained network, one-shot LSR with its
defaults, and Krylov LSR (Auto preconditioner, at most 300 iterations) with the products and
the solver in different precisions:

* ``f32``: everything in float32;
* ``mixed``: float32 products behind a float64 face; LSMR and the preconditioner in float64;
* ``mixed+floor``: the same, the preconditioner truncated at the float32 noise floor;
* ``f64``: float64 products (a float64 copy of the model and data);
* ``default``: ``refine(model, ..., method="krylov")`` with every default.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
from torch.func import functional_call, vmap

from ._harness import Record, suite

MAXITER = 300
VARIANTS = ("trained", "subspace", "f32", "mixed", "mixed+floor", "f64", "default")
COLUMNS = [
    ("case", "case"),
    ("variant", "variant"),
    ("rel_l2:.3e", "test rel. L2"),
    (lambda r: r.get("iterations") or "", "iterations"),
    (lambda r: _stop(r), "stop"),
    (lambda r: r.get("products") or "", "products"),
    (
        lambda r: r.get("precond_rank_kept") or r.get("precond_rank") or r.get("rank") or "",
        "precond rank",
    ),
    (lambda r: f"{r.get('wall_s', 0):.1f}", "wall (s)"),
]


def _stop(r) -> str:
    if "stop" in r:
        return r["stop"].split(":")[0]
    return "maxiter" if r.get("istop") == 7 else ""


def _fit(model, x, y, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()


# ---------------------------------------------------------------------- the three cases
def demo_case(quick):
    from ..problems import FunctionProblem

    prob = FunctionProblem(n_train=2000, seed=0)
    model = prob.make_model()
    prob.train(model, epochs=1000 if quick else 10000, lr=1e-3, progress=False)
    return dict(
        name="demo MLP 2-32x3-1 (2,241 params), 2,000 rows",
        model=model,
        data=(prob.x_train, prob.y_train),
        residual_fn=None,
        test=(prob.x_test, prob.y_test),
    )


def _user_target(x):
    return torch.exp(-(x[:, :1] ** 2)) * torch.cos(3 * x[:, 1:]) + 0.5 * x[:, :1] * x[:, 1:]


def user_case(quick):
    from ..models import MLP

    g = torch.Generator().manual_seed(1)
    x, xt = torch.rand(3000, 2, generator=g) * 2 - 1, torch.rand(2000, 2, generator=g) * 2 - 1
    torch.manual_seed(1)
    model = MLP((2, 40, 40, 40, 1))
    _fit(model, x, _user_target(x), 300 if quick else 3000)
    return dict(
        name="user MLP 2-40x3-1 (3,441 params), 3,000 rows",
        model=model,
        data=(x, _user_target(x)),
        residual_fn=None,
        test=(xt, _user_target(xt)),
    )


def _exact(x):
    return torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:])


def pinn_residual(model, x_int, x_bc, dtype):
    """-Laplace(u) - f at interior points and u at boundary points, through torch.func."""
    f = (2 * math.pi**2 * _exact(x_int)).reshape(-1).to(dtype)

    def u_scalar(p, pt):
        return functional_call(model, p, (pt[None],)).reshape(())

    def lap(p, pt):
        return torch.func.hessian(u_scalar, argnums=1)(p, pt).diagonal().sum()

    def residual(p):
        r_int = -vmap(lap, in_dims=(None, 0))(p, x_int) - f
        r_bc = functional_call(model, p, (x_bc,)).reshape(-1)
        return torch.cat([r_int, 10.0 * math.sqrt(x_int.shape[0] / x_bc.shape[0]) * r_bc])

    return residual


def pinn_case(quick):
    from ..models import MLP

    g = torch.Generator().manual_seed(2)
    x_int = torch.rand(800, 2, generator=g) * 2 - 1
    s = torch.rand(200, 1, generator=g) * 2 - 1
    one = torch.ones_like(s)
    x_bc = torch.cat([torch.cat(p, 1) for p in ((s, one), (s, -one), (one, s), (-one, s))])
    xt = torch.rand(2000, 2, generator=g) * 2 - 1
    torch.manual_seed(2)
    model = MLP((2, 64, 64, 64, 64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def u_pt(pt):
        return model(pt[None]).reshape(())

    for _ in range(100 if quick else 1500):
        opt.zero_grad()
        lap = vmap(lambda pt: torch.func.hessian(u_pt)(pt).diagonal().sum())(x_int)
        r = -lap - (2 * math.pi**2 * _exact(x_int)).reshape(-1)
        (r.square().mean() + 100 * model(x_bc).square().mean()).backward()
        opt.step()
    return dict(
        name="PINN Poisson, MLP 2-64x4-1 (12,737 params), torch.func Laplacian, 1,600 rows",
        model=model,
        data=None,
        test=(xt, _exact(xt)),
        residual_fn=lambda m, dt: pinn_residual(m, x_int.to(dt), x_bc.to(dt), dt),
    )


CASES = {"demo": demo_case, "user": user_case, "pinn": pinn_case}


# ---------------------------------------------------------------------- the variants
def rel(model_or_pred, test, dtype) -> float:
    x, y = test
    with torch.no_grad():
        pred = model_or_pred(x.to(dtype))
    return float((pred.double() - y.double()).norm() / y.double().norm())


def _refine(case, model, gen, **kw):
    import lsr_scale as ls

    if case["residual_fn"] is None:
        return ls.refine(model, data=case["data"], generator=gen, **kw)
    return ls.refine(
        model, residual_fn=case["residual_fn"](model, torch.float32), generator=gen, **kw
    )


def krylov(case, variant, gen) -> dict:
    import lsr_scale as ls
    from lsr_scale.operators import JacobianOperator
    from lsr_scale.precond import Auto, Nystrom
    from lsr_scale.refine import RefinedModel
    from lsr_scale.refine._precision import MixedPrecisionOperator, noise_floor

    dt = torch.float64 if variant == "f64" else torch.float32
    work = copy.deepcopy(case["model"]).to(dt)
    t0 = time.perf_counter()
    if case["residual_fn"] is None:
        x, y = case["data"]
        J = JacobianOperator.from_module(work, x.to(dt), y.to(dt))
    else:
        J = JacobianOperator(
            case["residual_fn"](work, dt), {k: v.detach() for k, v in work.named_parameters()}
        )
    A = J if variant in ("f32", "f64") else MixedPrecisionOperator(J, torch.float64)
    spec = Auto().choose(A.shape)
    M = spec.build(A, generator=gen)
    kept = None
    if variant == "mixed+floor" and isinstance(spec, Nystrom):  # drop sigma < floor * sigma_1
        lam, floor = M.eigenvalues, noise_floor(torch.float32)
        kept = int((lam >= floor**2 * lam[0]).sum())
        if kept < lam.numel():
            M._set_basis(M.U[:, :kept], lam[:kept], None)
            M.rank = kept
    res = ls.lsmr(
        A, -J.residual.to(A.dtype), atol=1e-8, btol=1e-8, conlim=1e12, maxiter=MAXITER, M=M
    )
    wall = time.perf_counter() - t0
    pred = RefinedModel(work, J.param_names, res.x.to(dt), {})
    return dict(
        rel_l2=rel(pred, case["test"], dt),
        wall_s=wall,
        iterations=res.itn,
        istop=int(res.istop),
        products=J.num_matvecs + J.num_rmatvecs,
        precond=spec.name,
        precond_rank=getattr(M, "rank", None),
        precond_rank_kept=kept,
    )


def measure(case, variant) -> dict:
    gen = torch.Generator().manual_seed(0)
    if variant == "trained":
        return {"rel_l2": rel(case["model"], case["test"], torch.float32)}
    if variant not in ("subspace", "default"):
        return krylov(case, variant, gen)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        r = _refine(
            case, case["model"], gen, **({"method": "krylov"} if variant == "default" else {})
        )
    out = dict(
        rel_l2=rel(r, case["test"], torch.float32),
        wall_s=time.perf_counter() - t0,
        products=r.info["num_jvp"] + r.info["num_vjp"],
    )
    if variant == "subspace":
        return {**out, "iterations": None, "rank": r.info["rank"]}
    return dict(
        out,
        iterations=r.info["iterations"],
        istop=int(r.info["solver"].istop),
        stop=r.info["stop"],
        precond=r.info["preconditioner"]["name"],
        precond_rank=r.info["preconditioner"]["rank"],
        precision=r.info["precision"],
        warned_maxiter=any("maxiter" in str(w.message) for w in caught),
    )


@suite("precision", "product and solve precision (float32/float64/mixed) vs accuracy")
def run(args) -> None:
    rec = Record("precision", out=args.out, device="cpu", quick=args.quick)
    rec.set(command=args.command, maxiter=MAXITER)
    cases = args.cases or (["demo"] if args.quick else list(CASES))
    for key in cases:
        if all(rec.has(case=key, variant=v) for v in VARIANTS):
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        case = CASES[key](args.quick)
        print(f"{key}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
        for variant in VARIANTS:
            if not rec.has(case=key, variant=variant):
                row = rec.add(
                    {
                        "case": key,
                        "name": case["name"],
                        "variant": variant,
                        **measure(case, variant),
                    }
                )
                print(f"  {key:5s} {variant:12s} {row['rel_l2']:.3e}", flush=True)
    print(
        rec.markdown(
            "Krylov precision on float32 models",
            COLUMNS,
            command=args.command,
            notes=[
                f"Krylov: LSMR, default Auto preconditioner (Nystrom rank 300 or half the "
                f"smaller side), at most {MAXITER} iterations, atol=btol=1e-8; `default`: "
                "refine's own defaults and stopping rule. Runs on the CPU."
            ],
        )
    )


@run.options
def _options(parser) -> None:
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        default=None,
        help="cases (default: all; quick: demo)",
    )
