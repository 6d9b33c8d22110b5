"""``lsr-scale bench precond``: preconditioners on network Jacobians, and the Nystrom rank.

Part ``compare`` (results ``precond_<device>``): two trained networks, a tanh MLP
[2, 32x3, 1] on sin(pi x) sin(pi y) (the demo problem) and a small tanh DeepONet on the
Burgers operator u(x, 0) -> u(x, 1). For each, ``min ||G0 x + f0||`` is solved by LSMR with
every right preconditioner: none, Jacobi, Nystrom from a randomized SVD (``svd``) and from a
shifted Nystrom sketch (``nystrom``) in float64 and float32, with a bfloat16 basis, and
sketch-and-precondition on the reduced operator G0 V_l. Per row:

* ``iters``: LSMR iterations until the linearized loss, recomputed from x with a dense
  float64 G0, is within 1% of the best rank-l (truncated SVD) loss;
* ``pairs``: JVP+VJP pairs to get there, the build included;
* ``wall_s``: build + solve (a second, timed run without the loss callback);
* ``peak_mb``: peak memory added by build + solve; ``test_err``: the linear predictor's
  relative L2 test error.

Part ``rank`` (results ``precond_rank_<device>``): the demo MLP refined with the Krylov
defaults and Nystrom ranks 0 (none), 25, ..., 300: build products, iterations to the stall
rule, all products, wall time and test error.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch

from ._harness import Record, md_table, peak_memory, suite, sync

VARIANT_COLUMNS = [
    ("problem", "problem"),
    ("preconditioner", "preconditioner"),
    ("dtype", "dtype"),
    (lambda r: f"{r['iters']}" if r["reached_target"] else f"> {r['iters']}", "iters"),
    (lambda r: f"{r['pairs']:.0f} ({r['build_pairs']:.0f})", "pairs (build)"),
    (lambda r: f"{r['wall_s']:.2f} ({r['build_s']:.2f})", "wall s (build)"),
    ("peak_mb:.1f", "peak MB"),
    ("loss_rel_best:.3f", "loss/best"),
    ("test_err:.3e", "test err"),
]
RANK_COLUMNS = [
    ("rank", "rank"),
    ("rel_l2:.2e", "test rel. L2"),
    ("iterations", "iterations"),
    ("stop", "stopped by"),
    ("build_products", "build products"),
    ("products", "all products"),
    ("wall_s:.1f", "wall (s)"),
]


# ------------------------------------------------------------------------------- problems
def mlp_problem(device, quick):
    from ..problems import FunctionProblem

    p = FunctionProblem(device=str(device), n_train=600 if quick else 2000)
    model = p.make_model()
    p.train(model, epochs=500 if quick else 3000, progress=False)
    return dict(
        name="mlp",
        label="tanh MLP [2,32x3,1], sin(pi x) sin(pi y), Adam",
        model=model,
        train=((p.x_train,), p.y_train),
        test=((p.x_test,), p.y_test),
        rank=50 if quick else 300,
    )


def deeponet_problem(device, quick):
    from ..problems import BurgersProblem

    p = BurgersProblem(
        n_train=40 if quick else 100,
        n_test=20,
        n_grid=16 if quick else 32,
        solver_grid=128,
        width=24,
        depth=2,
        device=str(device),
    )
    net = p.make_model()
    p.train(net, epochs=300 if quick else 3000, lr=3e-3, batch=100, progress=False)

    def aligned(u, y, s):  # one row per function-point pair, as the supervised loss has them
        B, P = u.shape[0], y.shape[0]
        return (u.repeat_interleave(P, dim=0), y.repeat(B, 1)), s.reshape(B * P, 1)

    return dict(
        name="deeponet",
        label="DeepONet branch [32,24,24] trunk [1,24,24], Burgers u0 -> u(t=1), Adam",
        model=net,
        train=aligned(p.u_train, p.y, p.s_train),
        test=aligned(p.u_test, p.y, p.s_test),
        rank=50 if quick else 200,
    )


def variants(rank):
    """(label, dtype, builder, iteration cap key); the comparison runs in float64, the
    float32 rows measure float32's resolution limit."""
    from ..precond import JacobiPreconditioner, NystromPreconditioner

    def g():
        return torch.Generator().manual_seed(0)

    f64, f32 = torch.float64, torch.float32

    def nys(**kw):
        return lambda A: NystromPreconditioner(A, rank, generator=g(), **kw)

    return [
        ("none", f64, None, "plain"),
        ("jacobi", f64, JacobiPreconditioner, "plain"),
        ("nystrom-svd", f64, nys(), "pre"),
        ("nystrom-nystrom", f64, nys(method="nystrom"), "pre"),
        ("nystrom-svd bf16 basis", f64, nys(basis_dtype=torch.bfloat16), "pre"),
        ("sketch on G0 V_l", f64, "sketch", "pre"),
        ("nystrom-svd", f32, nys(), "f32"),
        ("nystrom-nystrom", f32, nys(method="nystrom"), "f32"),
    ]


def _curve_points(n: int, dense: int = 100, total: int = 400) -> list[int]:
    """Indices for a convergence curve: every point up to ``dense``, then log-spaced."""
    if n <= total:
        return list(range(n))
    tail = {
        int(round(dense * (n / dense) ** (j / (total - dense)))) - 1
        for j in range(total - dense + 1)
    }
    return sorted(set(range(dense)) | {min(i, n - 1) for i in tail} | {n - 1})


def run_variant(J, b, build, rank, maxiter, loss_of, device, target, record):
    """Build the preconditioner and run LSMR; the solution, iterations, losses and costs."""
    import lsr_scale as ls
    from lsr_scale.operators import SubspaceOperator
    from lsr_scale.precond import SketchPreconditioner

    J.reset_counts()
    losses, stop_at = [], [None]
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        if build == "sketch":
            _, _, Vh = ls.randomized_svd(
                J, rank, oversample=10, generator=torch.Generator().manual_seed(0)
            )
            V = Vh[:rank].T.contiguous()
            A = SubspaceOperator(J, V)
            M = SketchPreconditioner(A, generator=torch.Generator().manual_seed(0))
            lift = lambda c: V @ c  # noqa: E731
        else:
            A, M, lift = J, (build(J) if build is not None else None), (lambda c: c)
        sync(device)
        build_time = time.perf_counter() - t0
        build_products = J.num_matvecs + J.num_rmatvecs

        def callback(x):
            losses.append(loss_of(lift(x)))
            if stop_at[0] is None and losses[-1] <= target:
                stop_at[0] = len(losses)

        res = ls.lsmr(
            A,
            b,
            atol=0.0,
            btol=0.0,
            conlim=math.inf,
            maxiter=maxiter,
            M=M,
            callback=callback if record else None,
        )
        sync(device)
        wall = time.perf_counter() - t0
    return dict(
        x=lift(res.x),
        itn=res.itn,
        losses=losses,
        stop_at=stop_at[0],
        build_time=build_time,
        build_pairs=build_products / 2,
        pairs=(J.num_matvecs + J.num_rmatvecs) / 2,
        wall_s=wall,
        precond_info=M.info() if M is not None else None,
    )


def bench_problem(prob, device, quick, rec: Record) -> dict:
    """Every variant on one problem (rows added to ``rec``); returns the problem's summary."""
    import lsr_scale as ls
    from lsr_scale.problems import rel_l2

    def cast(ts):
        return tuple(t.double() if t.is_floating_point() else t for t in ts)

    model32 = prob["model"]
    model64 = copy.deepcopy(model32).double()
    (xin, y), (xt, yt) = prob["train"], prob["test"]
    rank = prob["rank"]
    ops = {
        torch.float32: ls.JacobianOperator.from_module(model32, xin, y),
        torch.float64: ls.JacobianOperator.from_module(model64, cast(xin), y.double()),
    }
    J64 = ops[torch.float64]
    t0 = time.perf_counter()
    Jd, b64 = J64.to_dense(), -J64.residual
    U, S, Vh = torch.linalg.svd(Jd, full_matrices=False)
    dense_time = time.perf_counter() - t0

    def loss_of(x):
        return float((Jd @ x.double() - b64).square().sum())

    x_tsvd = Vh[:rank].T @ ((U[:, :rank].T @ b64) / S[:rank])
    loss0, loss_best = float(b64.square().sum()), loss_of(x_tsvd)
    Jq = ls.JacobianOperator.from_module(model64, cast(xt))
    yt64 = yt.double().reshape(-1)

    def test_err(x):
        with torch.no_grad():
            return rel_l2(Jq.residual + Jq.matvec(x.double()), yt64)

    full = torch.linalg.lstsq(Jd, b64[:, None], driver="gelsd").solution[:, 0]
    out = dict(
        section="problem",
        name=prob["name"],
        problem=prob["label"],
        rows=int(Jd.shape[0]),
        params=int(Jd.shape[1]),
        rank=rank,
        cond_G0_f64=float(S[0] / S[-1]),
        sigma=[float(S[0]), float(S[rank - 1]), float(S[-1])],
        loss_trained=loss0,
        loss_best_rank=loss_best,
        loss_full_rank_f64=loss_of(full),
        test_err_trained=test_err(torch.zeros(Jd.shape[1], dtype=torch.float64)),
        test_err_tsvd_rank=test_err(x_tsvd),
        dense_reference_s=dense_time,
        curves={},
    )
    t0 = time.perf_counter()
    data = (cast(xin) if len(xin) > 1 else xin[0].double(), y.double())
    refined = ls.refine(
        model64,
        data=data,
        method=ls.Subspace(rank=rank),
        generator=torch.Generator().manual_seed(0),
        progress_bar=False,
    )
    out["subspace_oneshot"] = dict(
        loss=loss_of(refined.delta),
        test_err=test_err(refined.delta),
        wall_s=time.perf_counter() - t0,
    )
    caps = {"plain": 600 if quick else 20000, "pre": 200 if quick else 300, "f32": 100}
    for label, dtype, build, cap in variants(rank):
        J, maxiter = ops[dtype], caps[cap]
        b = -J.residual
        trace = run_variant(J, b, build, rank, maxiter, loss_of, device, 1.01 * loss_best, True)
        iters = trace["stop_at"]
        with peak_memory(device) as pm:  # timed run: exactly the iterations needed
            timed = run_variant(J, b, build, rank, iters or maxiter, loss_of, device, 0.0, False)
        row = rec.add(
            dict(
                section="variant",
                problem=prob["name"],
                preconditioner=label,
                dtype=str(dtype).replace("torch.", ""),
                reached_target=iters is not None,
                iters=iters if iters is not None else maxiter,
                pairs=timed["pairs"],
                build_pairs=timed["build_pairs"],
                build_s=timed["build_time"],
                wall_s=timed["wall_s"],
                peak_mb=pm.increment_bytes / 2**20,
                peak_kind=pm.kind,
                loss_rel_best=loss_of(timed["x"]) / loss_best,
                test_err=test_err(timed["x"]),
                precond=timed["precond_info"],
            ),
            key=("section", "problem", "preconditioner", "dtype"),
        )
        keep = _curve_points(len(trace["losses"]))
        out["curves"][f"{label} ({row['dtype']})"] = {
            "pairs": [trace["build_pairs"] + i + 1 for i in keep],
            "rel_residual": [math.sqrt(trace["losses"][i] / loss0) for i in keep],
        }
        print(
            f"  {prob['name']:8s} {label:24s} {row['dtype']:8s} iters {row['iters']:5d} "
            f"wall {row['wall_s']:6.2f}s test {row['test_err']:.2e}",
            flush=True,
        )
    return out


def summarize(rows) -> dict:
    """The fastest preconditioner to the target, against none and Jacobi."""
    by = {(r["preconditioner"], r["dtype"]): r for r in rows}
    none, jac = by[("none", "float64")], by[("jacobi", "float64")]
    ok = [r for r in rows if r["reached_target"] and r["preconditioner"] not in ("none", "jacobi")]
    if not ok:
        return {"best": None}
    best = min(ok, key=lambda r: r["wall_s"])
    return dict(
        best=f"{best['preconditioner']} ({best['dtype']})",
        iters_ratio_vs_none=none["iters"] / best["iters"],
        wall_ratio_vs_none=none["wall_s"] / best["wall_s"],
        none_is_lower_bound=not none["reached_target"],
        beats_jacobi_iters=best["iters"] < jac["iters"],
        beats_jacobi_wall=best["wall_s"] < jac["wall_s"],
    )


def describe(p: dict) -> str:
    """The paragraph under a problem: G0's shape and spectrum, the reference losses."""
    s, one, summ = p["sigma"], p["subspace_oneshot"], p.get("summary", {})
    text = (
        f"**{p['problem']}.** G0: {p['rows']} rows x {p['params']} parameters, cond (float64) "
        f"{p['cond_G0_f64']:.2e}; rank l = {p['rank']} (sigma_1 = {s[0]:.3g}, sigma_l = "
        f"{s[1]:.3g}, sigma_min = {s[2]:.3g}). Linearized loss: trained "
        f"{p['loss_trained']:.3e}, best rank-l {p['loss_best_rank']:.3e}, full rank "
        f"{p['loss_full_rank_f64']:.3e}. Test error: trained {p['test_err_trained']:.3e}; best "
        f"rank-l {p['test_err_tsvd_rank']:.3e}; one-shot subspace LSR at rank l (float64) "
        f"{one['test_err']:.3e} in {one['wall_s']:.2f} s."
    )
    if summ.get("best"):
        bound = ">= " if summ["none_is_lower_bound"] else ""
        text += (
            f" Fastest to target: **{summ['best']}**, {bound}{summ['iters_ratio_vs_none']:.1f}x "
            f"fewer iterations and {bound}{summ['wall_ratio_vs_none']:.1f}x less wall time than "
            f"none; beats Jacobi on iterations: {summ['beats_jacobi_iters']}, on wall time: "
            f"{summ['beats_jacobi_wall']}."
        )
    return text


def compare(args) -> None:
    rec = Record("precond", out=args.out, device=args.device, quick=args.quick)
    rec.set(command=args.command)
    for make in (mlp_problem, deeponet_problem):
        name = make.__name__.split("_")[0]
        if rec.has(section="problem", name=name):
            continue
        t0 = time.perf_counter()
        prob = make(args.device, args.quick)
        print(f"{name}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
        summary = bench_problem(prob, args.device, args.quick, rec)
        summary["summary"] = summarize([r for r in rec.rows if r.get("problem") == name])
        rec.add(summary, key=("section", "name"))
    problems = [r for r in rec.rows if r["section"] == "problem"]
    text = rec.markdown(
        "Preconditioners on network Jacobians",
        VARIANT_COLUMNS,
        command=args.command,
        rows=[r for r in rec.rows if r["section"] == "variant"],
        notes=[
            "`iters`: LSMR iterations until the linearized loss ||G0 x + f0||^2, recomputed "
            "from x with a dense float64 G0, is within 1% of the best rank-l (truncated SVD) "
            "loss; `pairs`: JVP+VJP pairs including the build; `wall`: build + solve; "
            "`peak`: memory added by build + solve; `test err`: relative L2 error of the "
            "linear predictor. Wall times on a shared machine are noisy.",
            *map(describe, problems),
        ],
    )
    if not args.no_plot:
        rec.plot(lambda fig, ax: _draw(fig, problems))
    print(text)


def _draw(fig, problems) -> None:
    fig.clear()
    fig.set_size_inches(6.5 * len(problems), 4.5)
    for i, p in enumerate(problems):
        ax = fig.add_subplot(1, len(problems), i + 1)
        for label, c in p["curves"].items():
            if c["pairs"]:
                ax.semilogy(c["pairs"], c["rel_residual"], label=label, lw=1.4)
        best = math.sqrt(p["loss_best_rank"] / p["loss_trained"])
        ax.axhline(best, color="k", ls="--", lw=0.8, label=f"best rank-{p['rank']} (f64)")
        ax.set(
            xscale="log",
            xlabel="JVP+VJP pairs (build included)",
            ylabel="||G0 x + f0|| / ||f0||",
            title=f"{p['name']}: {p['rows']} x {p['params']}",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


def rank_sweep(args) -> None:
    import lsr_scale as ls
    from lsr_scale.precond import Nystrom
    from lsr_scale.problems import FunctionProblem

    rec = Record("precond", stem="precond_rank", out=args.out, device=args.device, quick=args.quick)
    ranks = (0, 25, 50) if args.quick else (0, 25, 50, 100, 200, 300)
    prob = FunctionProblem(n_train=600 if args.quick else 2000, seed=0, device=str(args.device))
    model = prob.make_model()
    prob.train(model, epochs=500 if args.quick else 10000, lr=3e-3, progress=False)
    rec.set(command=args.command, trained_rel_l2=prob.test_error(model))
    for r in ranks:
        if rec.has(rank=r):
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = ls.refine(
                model,
                data=(prob.x_train, prob.y_train),
                method=ls.Krylov(preconditioner=None if r == 0 else Nystrom(rank=r)),
                generator=torch.Generator().manual_seed(0),
            )
        p = ref.info["preconditioner"]
        rec.add(
            dict(
                rank=r,
                rel_l2=prob.test_error(ref),
                iterations=ref.info["iterations"],
                stop=ref.info["stop"].split(":")[0],
                build_products=p.get("build_matvecs", 0) + p.get("build_rmatvecs", 0),
                products=ref.info["num_jvp"] + ref.info["num_vjp"],
                wall_s=time.perf_counter() - t0,
            ),
            key=("rank",),
        )
    print(
        rec.markdown(
            "Nystrom rank against iterations (demo MLP, float32 model, Krylov defaults)",
            RANK_COLUMNS,
            command=args.command,
            notes=[f"Trained network: {rec.meta['trained_rel_l2']:.2e}."],
        )
    )


@suite("precond", "preconditioners: build time, iterations, accuracy; rank sweep")
def run(args) -> None:
    if args.part in ("compare", "all"):
        compare(args)
    if args.part in ("rank", "all"):
        rank_sweep(args)


@run.options
def _options(parser) -> None:
    parser.add_argument("--part", choices=("compare", "rank", "all"), default="all")
    parser.add_argument("--no-plot", action="store_true", help="skip the convergence plot")


__all__ = ["run", "md_table"]
