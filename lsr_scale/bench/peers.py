"""Suite ``peers``: lsr_scale side by side with what a user would pick instead (issue 12).

The same trained networks (the demo MLP, the paper-size function MLP, the Burgers DeepONet and
the Poisson PINN), the same machine, one row per tool: lsr_scale's subspace and Krylov
refinements with every default and with the best settings of ``docs/solvers.md``; curvlinops'
``JacobianLinearOperator`` solved by scipy's ``lsmr``; scipy's ``lsmr`` and ``lstsq`` on the
dense float64 Jacobian where it fits; continued training (Adam, L-BFGS, our own damped
Gauss-Newton) for the wall time of the slowest lsr_scale row; cupyx ``lsmr`` on a GPU.
``docs/peers.md`` describes each row and reads the results. The classification peers are
rows of ``bench/classification.py`` (their measure is test accuracy, not relative L2).

Each row runs in a fresh process (:func:`~._harness.run_isolated`: its peak memory is its
own; ``--quick``: in-process, tiny sizes) and is recorded as soon as it exists; a rerun
resumes. The markdown and the plots ``docs/img/peers_<problem>.png`` (beside the results for
a quick run or another ``--out``) are rewritten after every row::

    lsr-scale bench peers                    # all problems (long: see docs/peers.md)
    lsr-scale bench peers --problems demo    # one problem
    lsr-scale bench peers --plot-only        # redraw table and plots from the JSON
    lsr-scale bench peers --device cuda      # the cupyx row on the function MLP (peers_<gpu>.*)
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

import lsr_scale as ls

from ..precond import Nystrom
from ._harness import DEFAULT_OUT, Record, load_info, md_table, peak_memory, run_isolated, suite

PROBLEMS = ("demo", "function", "burgers", "poisson")
# (key, tool label); the order is the run order (training budgets need the lsr rows first)
TOOLS = (
    ("trained", "trained network (no refinement)"),
    ("subspace_default", "lsr_scale subspace, defaults"),
    ("krylov_default", "lsr_scale Krylov, defaults"),
    ("subspace_best", "lsr_scale subspace, best settings"),
    ("krylov_best", "lsr_scale Krylov, best settings"),
    ("curvlinops_lsmr", "curvlinops J + scipy lsmr"),
    ("dense_lsmr", "scipy lsmr, dense J"),
    ("dense_lstsq", "scipy lstsq, dense J"),
    ("adam", "Adam, equal wall time"),
    ("lbfgs", "L-BFGS (strong Wolfe), equal wall time"),
    ("gauss_newton", "damped Gauss-Newton (own, dense J), equal wall time"),
    ("cupyx_lsmr", "cupyx lsmr (GPU)"),
)
TOOL_LABEL = dict(TOOLS)
LSR_ROWS = ("subspace_default", "krylov_default", "subspace_best", "krylov_best")
TRAIN_ROWS = ("adam", "lbfgs", "gauss_newton")
# dense float64 Jacobians up to this size are built (24 GB machine shared by several people)
DENSE_LIMIT_BYTES = 6 * 2**30
# continued training gets the slowest lsr_scale row's wall time, capped at this
BUDGET_CAP_S = 180.0


def _cache() -> Path:
    """Where trained demo models and Burgers data are kept between runs."""
    default = Path(tempfile.gettempdir()) / "lsr_peers_cache"
    path = Path(os.environ.get("LSR_PEERS_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------- problems
def _to_vec(d, names):
    return torch.cat([d[k].reshape(-1) for k in names])


def _jac_matrix(jd, names):
    """A dict of per-parameter Jacobian blocks (rows first) as one matrix."""
    return torch.cat([jd[k].reshape(jd[k].shape[0], -1) for k in names], 1)


def _to_dict(v, p0):
    out, i = {}, 0
    for k, t in p0.items():
        out[k] = v[i : i + t.numel()].reshape(t.shape).to(t.dtype)
        i += t.numel()
    return out


def _rel(pred, target):
    pred, target = pred.reshape(-1).double(), target.reshape(-1).double()
    return float((pred - target).norm() / target.norm())


def _finish(c):
    """Common fields of a case: float64 parameters, linear-predictor error, sizes."""
    c.p0 = {k: v.detach().clone() for k, v in c.model64.named_parameters()}
    c.m = sum(v.numel() for v in c.p0.values())
    with torch.no_grad():
        c.r0 = c.residual(c.p0).detach()
    c.n = c.r0.numel()

    def lin_err(delta):
        delta = {k: delta[k].to(torch.float64) for k in c.p0}
        with torch.no_grad():
            out, dout = jvp(c.test_pred, (c.p0,), (delta,))
        return _rel(out + dout, c.test_target)

    def net_err(p):
        with torch.no_grad():
            return _rel(c.test_pred(p), c.test_target)

    c.lin_err = lin_err
    c.net_err = net_err
    return c


def _mlp_case(name, prob, model, quick, meta):
    """Supervised MLP (demo and function): residual model(x) - y."""
    model64 = copy.deepcopy(model).double()
    x, y = prob.x_train.double(), prob.y_train.double()
    xt, yt = prob.x_test.double(), prob.y_test.double()
    g = torch.Generator().manual_seed(123)
    xv = 2 * torch.rand(2000 if not quick else 200, 2, generator=g, dtype=torch.float64) - 1
    from lsr_scale.problems._function import target_function

    c = SimpleNamespace(name=name, model=model, model64=model64, meta=meta)
    c.refine_trained = dict(data=(prob.x_train, prob.y_train))
    c.refine64 = dict(data=(x, y))
    c.validation = (xv, target_function(xv))
    c.test_inputs = (prob.x_test,)
    c.test_target = yt
    c.residual = lambda p: (functional_call(model64, p, (x,)) - y).reshape(-1)
    c.test_pred = lambda p: functional_call(model64, p, (xt,))
    c.curv = (model64, [(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)])

    def dense_jac(p, out):
        def f1(pp, xi):
            return functional_call(model64, pp, (xi[None],)).reshape(())

        row = 0
        for i in range(0, len(x), 256):
            blk = _jac_matrix(vmap(jacrev(f1), in_dims=(None, 0))(p, x[i : i + 256]), list(p))
            out[row : row + blk.shape[0]] = blk.numpy()
            row += blk.shape[0]
        return out

    c.dense_jac = dense_jac
    return _finish(c)


def demo_case(quick=False):
    from lsr_scale.problems import FunctionProblem

    if quick:
        prob = FunctionProblem(n_train=200, widths=(2, 16, 16, 1), grid=16)
        epochs = 300
    else:
        prob = FunctionProblem(n_train=2000)  # as `lsr-scale demo`: seed 0, [2, 32x3, 1]
        epochs = 10000
    model = prob.make_model()
    ck = _cache() / f"demo{'_quick' if quick else ''}.pt"
    if ck.exists():
        blob = torch.load(ck)
        model.load_state_dict(blob["state"])
        meta = blob["meta"]
    else:
        t0 = time.perf_counter()
        prob.train(model, epochs=epochs, lr=3e-3, progress=False)  # the demo's defaults
        meta = {"train": f"Adam {epochs} epochs, lr 3e-3 -> 3e-5 (as lsr-scale demo)"}
        meta["train_wall_s"] = time.perf_counter() - t0
        torch.save({"state": model.state_dict(), "meta": meta}, ck)
    return _mlp_case("demo", prob, model, quick, meta)


def function_case(quick=False):
    from lsr_scale.problems import FunctionProblem
    from lsr_scale.problems._checkpoint import checkpoint_path, load_checkpoint

    prob = FunctionProblem(n_train=8000, widths=(2, 128, 128, 128, 128, 128, 128, 1))
    model = prob.make_model()
    meta = load_checkpoint(model, checkpoint_path("function_mlp"))
    meta = {"train": f"committed checkpoint function_mlp.pt (Adam {meta.get('epochs')} epochs)"}
    return _mlp_case("function", prob, model, quick, meta)


def burgers_case(quick=False):
    from lsr_scale.problems._burgers import BurgersProblem, DeepONetGrid
    from lsr_scale.problems._checkpoint import checkpoint_path, load_checkpoint

    ck = _cache() / "burgers_data.pt"
    if ck.exists():
        d = torch.load(ck)
        prob = BurgersProblem.__new__(BurgersProblem)
        prob.n_grid, prob.width, prob.depth, prob.seed = 128, 128, 4, 0
        prob.dtype, prob.device = torch.float64, "cpu"
        for k, v in d.items():
            setattr(prob, k, v)
    else:
        prob = BurgersProblem(dtype=torch.float64)
        val = BurgersProblem(n_train=1, n_test=100, seed=12345, dtype=torch.float64)
        d = {k: getattr(prob, k) for k in ("y", "u_train", "s_train", "u_test", "s_test")}
        d.update(u_val=val.u_test, s_val=val.s_test)
        torch.save(d, ck)
        prob.u_val, prob.s_val = val.u_test, val.s_test
    net = prob.make_model()
    meta = load_checkpoint(net, checkpoint_path("burgers_deeponet"))
    meta = {"train": f"committed checkpoint burgers_deeponet.pt (Adam {meta.get('epochs')} epochs)"}
    view = DeepONetGrid(net, y=prob.y)  # one row per function: forward(u) on the fixed grid
    u, s = prob.u_train, prob.s_train
    c = SimpleNamespace(name="burgers", model=view, model64=view, meta=meta)

    def residual(p):
        return (functional_call(view, p, (u,)) - s).reshape(-1)

    c.residual = residual
    c.refine_trained = dict(residual_fn=residual)
    c.refine64 = dict(residual_fn=residual)
    c.validation = (prob.u_val, prob.s_val)
    c.test_inputs = (prob.u_test,)
    c.test_target = prob.s_test
    c.test_pred = lambda p: functional_call(view, p, (prob.u_test,))
    c.curv = (view, [(u[i : i + 100], s[i : i + 100]) for i in range(0, len(u), 100)])
    c.dense_jac = None
    return _finish(c)


class _PinnResidual(torch.nn.Module):
    """The Poisson residual as a module (curvlinops linearizes module outputs): forward(X)
    ignores X (n x 1 placeholder rows) and returns the stacked residual as (n, 1)."""

    def __init__(self, net, prob):
        super().__init__()
        self.net = net
        self.prob = prob

    def forward(self, X):
        fn = self.prob.residual_fn(self.net)
        return fn(dict(self.net.named_parameters()))[:, None]


def poisson_case(quick=False):
    from lsr_scale.problems._checkpoint import checkpoint_path, load_checkpoint
    from lsr_scale.problems._poisson import CPU_CONFIG, PoissonProblem

    if quick:
        cfg = dict(n_interior=200, n_boundary=40, widths=(2, 16, 16, 1), grid=21)
    else:
        cfg = dict(CPU_CONFIG)
    prob = PoissonProblem(**cfg, dtype=torch.float64)
    net = prob.make_model()
    if quick:
        prob.train(net, epochs=200, lr=3e-3, progress=False)
        meta = {"train": "Adam 200 epochs (quick)"}
    else:
        m = load_checkpoint(net, checkpoint_path("poisson_pinn"))
        meta = {"train": f"committed checkpoint poisson_pinn.pt (Adam {m.get('epochs')} epochs)"}
    fn = prob.residual_fn(net)
    c = SimpleNamespace(name="poisson", model=net, model64=net, meta=meta)
    c.residual = fn
    c.refine_trained = dict(residual_fn=fn)
    c.refine64 = dict(residual_fn=fn)
    c.validation = None
    c.test_inputs = (prob.x_test,)
    c.test_target = prob.u_test
    c.test_pred = lambda p: functional_call(net, p, (prob.x_test,))[:, 0]
    c.subspace_inputs = prob.x_int
    n_tot = prob.n_interior + prob.n_boundary
    dummy = torch.zeros(n_tot, 1, dtype=torch.float64)
    c.curv = (_PinnResidual(net, prob), [(dummy, dummy)])

    def dense_jac(p, out):
        # rows in stack_residuals' order and scaling: [sqrt(N/N_int) r_pde; sqrt(w N/N_bc) r_bc]
        names = list(p)
        s_pde = math.sqrt(n_tot / prob.n_interior)
        s_bc = math.sqrt(prob.bc_weight * n_tot / prob.n_boundary)
        row = 0
        for i in range(0, prob.n_interior, 200):
            blk = prob.blocks(net, x_int=prob.x_int[i : i + 200])["pde"]
            j = _jac_matrix(jacrev(blk)(p), names) * s_pde
            out[row : row + j.shape[0]] = j.numpy()
            row += j.shape[0]
        out[row:] = (_jac_matrix(jacrev(prob.blocks(net)["bc"])(p), names) * s_bc).numpy()
        return out

    c.dense_jac = dense_jac
    c = _finish(c)
    c.curv_data_fix = True
    return c


CASES = dict(demo=demo_case, function=function_case, burgers=burgers_case, poisson=poisson_case)

# settings per problem: scipy lsmr iterations (curvlinops and dense: the same solver, so
# the two rows differ only in how a product is taken), and the "best settings" rows
SETTINGS = {
    "demo": dict(lsmr_maxiter=3000, krylov_rank=300, subspace_candidates=None),
    "function": dict(lsmr_maxiter=300, krylov_rank=200, subspace_candidates=[100, 200, 300, 400]),
    # k <= 400: k = 1,000 was worse on validation in docs/results.md, and costs 2.5x the time
    "burgers": dict(
        lsmr_maxiter=300, krylov_rank=300, subspace_candidates=[25, 50, 100, 200, 300, 400]
    ),
    "poisson": dict(lsmr_maxiter=300, krylov_rank=300, subspace_rank=500),
}
QUICK_SETTINGS = {
    "demo": dict(lsmr_maxiter=200, krylov_rank=40, subspace_candidates=[10, 20, 40, 80]),
    "poisson": dict(lsmr_maxiter=100, krylov_rank=40, subspace_rank=60),
}


# ---------------------------------------------------------------------- the rows
def _lsr_row(c, key, cfg, quick):
    g = torch.Generator().manual_seed(0)
    kw = dict(generator=g, progress_bar=False)
    if key == "subspace_default":
        r = ls.refine(c.model, method="subspace", **c.refine_trained, **kw)
        settings = "ls.refine(model, ...) on the model as trained (method='subspace')"
    elif key == "krylov_default":
        r = ls.refine(c.model, method="krylov", **c.refine_trained, **kw)
        settings = "ls.refine(model, ..., method='krylov') on the model as trained"
    elif key == "subspace_best":
        if c.validation is not None:
            cand = cfg["subspace_candidates"]
            method = ls.Subspace(rank="auto", rank_candidates=cand)
            r = ls.refine(
                c.model64,
                method=method,
                validation=c.validation,
                dtype=torch.float64,
                **c.refine64,
                **kw,
            )
            settings = (
                "float64, rank chosen on held-out validation data from "
                f"{cand or 'the default grid'}"
            )
        else:
            k = cfg["subspace_rank"]
            sub = c.subspace_inputs[torch.randperm(len(c.subspace_inputs), generator=g)[: k + 1000]]
            method = ls.Subspace(rank=k, subspace="output", subspace_inputs=sub)
            r = ls.refine(c.model64, method=method, dtype=torch.float64, **c.refine64, **kw)
            settings = f"float64, rank {k}, output-Jacobian subspace (the paper's PINN setting)"
    else:  # krylov_best
        rank = cfg["krylov_rank"]
        method = ls.Krylov(preconditioner=Nystrom(rank=rank))
        extra = {}
        if c.validation is not None:
            extra["validation"] = c.validation
        r = ls.refine(c.model64, method=method, dtype=torch.float64, **extra, **c.refine64, **kw)
        settings = f"float64, Nystrom preconditioner from a randomized SVD, rank {rank}" + (
            ", best validation iterate" if extra else ""
        )
    info = r.info
    with torch.no_grad():
        dt = next(iter(r.delta_dict.values())).dtype
        err = _rel(r(*(t.to(dt) for t in c.test_inputs)), c.test_target)
    return dict(
        rel_l2=err,
        products=int(info["num_jvp"] + info["num_vjp"]),
        settings=settings,
        rank=info.get("rank"),
        iterations=info.get("iterations"),
        stop=str(info.get("stop", "")) or None,
        preconditioner=(info.get("preconditioner") or {}).get("name")
        if isinstance(info.get("preconditioner"), dict)
        else None,
    )


class _Counted:
    def __init__(self):
        self.mv = 0
        self.rmv = 0


def _lsmr(A, b, maxiter):
    from scipy.sparse.linalg import lsmr

    out = lsmr(A, b, atol=1e-8, btol=1e-8, maxiter=maxiter)
    return out[0], dict(istop=int(out[1]), iterations=int(out[2]), normr=float(out[3]))


def _curvlinops_row(c, cfg, quick):
    try:
        from curvlinops import JacobianLinearOperator
    except ImportError:
        return dict(absent="curvlinops-for-pytorch is not installed (pip install '.[peers]')")
    from scipy.sparse.linalg import LinearOperator

    model, data = c.curv
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {}
    if getattr(c, "curv_data_fix", False):
        kw = dict(check_deterministic=False)
    J = JacobianLinearOperator(model, params, data, **kw).to_scipy(dtype=np.float64)
    cnt = _Counted()

    def mv(v):
        cnt.mv += 1
        return J.matvec(v)

    def rmv(v):
        cnt.rmv += 1
        return J.rmatvec(v)

    A = LinearOperator(J.shape, matvec=mv, rmatvec=rmv, dtype=np.float64)
    b = -c.r0.numpy()
    x, st = _lsmr(A, b, cfg["lsmr_maxiter"])
    err = c.lin_err(_to_dict(torch.from_numpy(x), c.p0))
    return dict(
        rel_l2=err,
        products=cnt.mv + cnt.rmv,
        settings=f"JacobianLinearOperator(...).to_scipy(); scipy lsmr atol=btol=1e-8, "
        f"maxiter={cfg['lsmr_maxiter']}, no preconditioner",
        **st,
    )


def _dense_fits(c):
    need = c.n * c.m * 8
    if need > DENSE_LIMIT_BYTES:
        return (
            f"does not fit: the dense float64 Jacobian is {c.n:,} x {c.m:,} = {need / 1e9:.0f} GB"
        )
    return None


def _build_dense(c, p=None):
    out = np.empty((c.n, c.m), dtype=np.float64)
    return c.dense_jac(c.p0 if p is None else p, out)


def _check_dense(c, J):
    """The dense Jacobian agrees with a torch.func JVP of the residual (guards row order)."""
    g = torch.Generator().manual_seed(5)
    v = torch.randn(c.m, generator=g, dtype=torch.float64)
    _, jv = jvp(c.residual, (c.p0,), (_to_dict(v, c.p0),))
    d = np.linalg.norm(J @ v.numpy() - jv.numpy()) / np.linalg.norm(jv.numpy())
    if d > 1e-8:
        raise RuntimeError(f"dense Jacobian disagrees with the JVP: relative {d:.2e}")


def _dense_row(c, key, cfg, quick):
    why = _dense_fits(c)
    if why:
        return dict(absent=why)
    if key == "dense_lstsq" and c.name == "function":
        return dict(
            absent="not run: LAPACK gelsd on 8,000 x 83,073 float64 is ~5e12 flops plus two 5.3 GB "
            "copies of J, beyond the 8-minute row budget on one shared CPU thread (27 GFLOP/s "
            "measured for a dense matmul)"
        )
    t0 = time.perf_counter()
    J = _build_dense(c)
    t_build = time.perf_counter() - t0
    _check_dense(c, J)
    b = -c.r0.numpy()
    if key == "dense_lsmr":
        x, st = _lsmr(J, b, cfg["lsmr_maxiter"])
        settings = f"scipy lsmr atol=btol=1e-8, maxiter={cfg['lsmr_maxiter']}, dense float64 J"
    else:
        import scipy.linalg

        x, _, rk, _ = scipy.linalg.lstsq(J, b, lapack_driver="gelsd")
        st = dict(numerical_rank=int(rk))
        settings = "scipy.linalg.lstsq(J, b, lapack_driver='gelsd'), default cond"
    err = c.lin_err(_to_dict(torch.from_numpy(x), c.p0))
    return dict(
        rel_l2=err,
        products=c.n,  # one VJP per row to build J
        settings=settings + f"; J built by per-row torch.func.jacrev in {t_build:.1f} s",
        build_s=t_build,
        **st,
    )


def _train_row(c, key, budget, quick):
    """Continued training from the trained weights, in float64, for `budget` seconds of
    compute (the test-error evaluations on the curve are not timed)."""
    if key == "gauss_newton":
        why = _dense_fits(c)
        if why:
            return dict(absent=why + " (the Gauss-Newton step here is our own, on a dense J)")
        if c.name == "function":
            return dict(
                absent="not run: one Gauss-Newton step needs J J^T of 8,000 x 83,073 (~5e12 "
                "flops) plus the 5.3 GB J, beyond the row budget on one shared CPU thread"
            )
    p = {k: v.clone().requires_grad_(key != "gauss_newton") for k, v in c.p0.items()}
    n_calls = [0]

    def loss():
        n_calls[0] += 1
        return c.residual(p).square().mean()

    curve = [(0.0, c.net_err(p))]
    wall = 0.0
    next_eval = budget / 30
    lam = None
    settings = ""
    if key == "adam":
        lr0 = 1e-4
        opt = torch.optim.Adam(p.values(), lr=lr0)
        settings = f"Adam lr {lr0:g} decaying 100x over the budget (exponential in time), float64"
    elif key == "lbfgs":
        opt = torch.optim.LBFGS(
            p.values(),
            lr=1.0,
            max_iter=20,
            history_size=50,
            line_search_fn="strong_wolfe",
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )
        settings = "torch.optim.LBFGS(lr=1, max_iter=20, history_size=50, strong_wolfe), float64"
    else:
        settings = (
            "own damped Gauss-Newton (Levenberg-Marquardt): dense J by jacrev, "
            "delta = -J^T (J J^T + lam I)^-1 r, lam x1/3 on success, x4 on failure, float64"
        )
    steps = 0
    while wall < budget:
        t0 = time.perf_counter()
        if key == "adam":
            for gp in opt.param_groups:
                gp["lr"] = lr0 * 0.01 ** min(1.0, wall / budget)
            opt.zero_grad(set_to_none=True)
            ls_ = loss()
            ls_.backward()
            opt.step()
        elif key == "lbfgs":

            def closure():
                opt.zero_grad(set_to_none=True)
                v = loss()
                v.backward()
                return v

            opt.step(closure)
        else:
            J = _build_dense(c, p)
            n_calls[0] += c.n
            with torch.no_grad():
                r = c.residual(p).numpy()
            K = J @ J.T
            s, U = np.linalg.eigh(K)
            gvec = U.T @ r
            f_old = float(r @ r)
            if lam is None:
                lam = 1e-3 * float(np.trace(K)) / c.n
            for _ in range(30):
                z = U @ (gvec / (s + lam))
                d = -(J.T @ z)
                q = {k: p[k] + v for k, v in _to_dict(torch.from_numpy(d), p).items()}
                with torch.no_grad():
                    rn = c.residual(q)
                    n_calls[0] += 1
                f_new = float(rn @ rn)
                if f_new < f_old:
                    p = q
                    lam /= 3
                    break
                lam *= 4
            del J, K, U
        steps += 1
        wall += time.perf_counter() - t0
        if wall >= next_eval or wall >= budget:
            curve.append((wall, c.net_err(p)))
            next_eval = wall + budget / 30
    return dict(
        rel_l2=curve[-1][1],
        products=n_calls[0],
        steps=steps,
        budget_s=budget,
        settings=settings + f"; {steps} steps in {wall:.1f} s (budget {budget:.1f} s)",
        curve=curve,
        wall_override=wall,
    )


def _cupyx_absent() -> str | None:
    """Why the cupyx row cannot run here (None: it can)."""
    if not torch.cuda.is_available():
        return "no GPU on this machine (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("cupy") is None:
        return "cupy is not installed (pip install '.[cuda]')"
    return None


def _cupyx_row(c, cfg, quick):
    import cupy as cp
    from cupyx.scipy.sparse.linalg import LinearOperator as CuLO
    from cupyx.scipy.sparse.linalg import lsmr as culsmr

    if "data" not in c.refine64:
        return dict(absent="this problem's residual closure holds CPU tensors; GPU row not wired")
    # matrix-free: torch.func JVP/VJP of the residual on the GPU, cupyx lsmr on top
    dev = torch.device("cuda")
    model = copy.deepcopy(c.model64).to(dev)
    x, y = (t.to(dev) for t in c.refine64["data"])
    cached = {k: v.to(dev) for k, v in c.p0.items()}

    def res(p):
        return (functional_call(model, p, (x,)) - y).reshape(-1)

    _, vjp_fn = vjp(res, cached)
    cnt = _Counted()

    def mv(v):
        cnt.mv += 1
        t = torch.as_tensor(v, device=dev)
        return cp.asarray(jvp(res, (cached,), (_to_dict(t, cached),))[1])

    def rmv(v):
        cnt.rmv += 1
        (g,) = vjp_fn(torch.as_tensor(v, device=dev))
        return cp.asarray(_to_vec(g, list(cached)))

    A = CuLO((c.n, c.m), matvec=mv, rmatvec=rmv, dtype=cp.float64)
    b = -cp.asarray(res(cached).detach())
    out = culsmr(A, b, atol=1e-8, btol=1e-8, maxiter=cfg["lsmr_maxiter"])
    delta = torch.as_tensor(out[0], device=dev).cpu()
    return dict(rel_l2=c.lin_err(_to_dict(delta, c.p0)), products=cnt.mv + cnt.rmv, device="cuda",
                settings=f"cupyx lsmr atol=btol=1e-8, maxiter={cfg['lsmr_maxiter']}, torch.func "
                "JVP/VJP on the GPU, float64")  # fmt: skip


def _absent_row(problem, key, why) -> dict:
    return dict(problem=problem, key=key, tool=TOOL_LABEL[key], rel_l2=None, wall_s=None,
                peak_mem_bytes=None, products=None, device="cpu", absent=why)  # fmt: skip


def run_row(problem, key, quick, budget):
    """Build the case and run one row in this process; returns the row dict."""
    if key == "cupyx_lsmr" and _cupyx_absent():  # before building the case (it may train)
        return _absent_row(problem, key, _cupyx_absent())
    t_setup = time.perf_counter()
    c = CASES[problem](quick)
    t_setup = time.perf_counter() - t_setup
    cfg = (QUICK_SETTINGS if quick else SETTINGS)[problem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        with peak_memory("cpu") as pm:
            if key == "trained":
                out = dict(rel_l2=c.net_err(c.p0), products=0, settings=c.meta["train"])
            elif key in LSR_ROWS:
                out = _lsr_row(c, key, cfg, quick)
            elif key == "curvlinops_lsmr":
                out = _curvlinops_row(c, cfg, quick)
            elif key in ("dense_lsmr", "dense_lstsq"):
                out = _dense_row(c, key, cfg, quick)
            elif key in TRAIN_ROWS:
                out = _train_row(c, key, budget, quick)
            elif key == "cupyx_lsmr":
                out = _cupyx_row(c, cfg, quick)
            else:
                raise ValueError(f"row: unknown tool {key!r}")
        wall = time.perf_counter() - t0
    wall = out.pop("wall_override", wall)
    row = dict(
        problem=problem,
        key=key,
        tool=TOOL_LABEL[key],
        rel_l2=out.pop("rel_l2", None),
        wall_s=None if "absent" in out or key == "trained" else wall,
        peak_mem_bytes=None if "absent" in out else pm.peak_bytes,
        peak_mem_kind=pm.kind,
        products=out.pop("products", None),
        device=out.pop("device", "cpu"),
        n_rows=c.n,
        n_params=c.m,
        setup_s=t_setup,
        threads=torch.get_num_threads(),
        **out,
    )
    return row


# ---------------------------------------------------------------------- driver
def _worker(spec: dict) -> dict:
    """One row in a fresh process (:func:`run_isolated`'s target)."""
    return run_row(spec["problem"], spec["key"], quick=False, budget=spec["budget"])


def _isolated_row(problem, key, args, budget) -> dict:
    spec = dict(problem=problem, key=key, budget=budget)
    t0 = time.perf_counter()
    try:
        return run_isolated(
            "lsr_scale.bench.peers:_worker", spec, timeout=args.row_timeout, threads=args.threads
        )
    except RuntimeError as err:
        why = "failed: " + " | ".join(str(err).strip().splitlines()[-3:])
    except subprocess.TimeoutExpired:
        why = (
            f"timed out: no result within {args.row_timeout} s on this shared CPU "
            f"(ran {time.perf_counter() - t0:.0f} s)"
        )
    return _absent_row(problem, key, why)


def _budget(rec, problem, quick):
    if quick:
        return 1.0
    walls = [r["wall_s"] for r in rec.rows if r["problem"] == problem and r["key"] in LSR_ROWS]
    walls = [w for w in walls if w]
    return min(BUDGET_CAP_S, max(walls)) if walls else 60.0


@suite("peers", "lsr_scale beside curvlinops, dense scipy and continued training")
def run(args):
    gpu = args.device.type == "cuda"  # on a GPU: the cupyx row, on the paper-size MLP
    problems = args.problems or (["function"] if gpu else list(PROBLEMS))
    tools = args.tools or (["cupyx_lsmr"] if gpu else list(TOOL_LABEL))
    if args.quick and not {"demo", "poisson"} & set(problems):
        raise SystemExit("peers --quick: only demo and poisson have quick sizes")
    rec = Record("peers", out=args.out, device=args.device, quick=args.quick)
    full = args.out == DEFAULT_OUT and not args.quick  # the docs figures from full runs only
    img = Path(args.img or (Path("docs") / "img" if full else args.out))
    redo = {tuple(s.split(":")) for s in args.redo}
    rec.rows = [r for r in rec.rows if (r["problem"], r["key"]) not in redo]
    for problem in [] if args.plot_only else problems:
        for key in tools:  # in the order given (default: TOOLS)
            # a placeholder ("pending": a row a session had no time for) is replaced
            if not (rec.get(problem=problem, key=key) or {"pending": 1}).get("pending"):
                continue
            budget = _budget(rec, problem, args.quick)
            t0 = time.perf_counter()
            if args.quick:
                row = run_row(problem, key, quick=True, budget=budget)
            else:
                row = _isolated_row(problem, key, args, budget)
            load = load_info()["loadavg"]
            row.update(load_1min=load[0] if load else None, date=time.strftime("%Y-%m-%d %H:%M"))
            rec.add(row, key=("problem", "key"))
            took = f"({time.perf_counter() - t0:.0f} s) {row.get('absent', '')}"
            print(
                f"{problem:9s} {key:17s} rel_l2={row.get('rel_l2')} wall={row.get('wall_s')} "
                + took,
                flush=True,
            )
            _markdown(rec, args)
    _markdown(rec, args)
    if not args.no_plot and (args.img or not gpu):  # the figures are of the CPU rows
        for problem in PROBLEMS:
            rows = [r for r in rec.rows if r["problem"] == problem]
            if rows:
                rec.plot(
                    lambda fig, ax, p=problem, rs=rows: _draw(fig, ax, p, rs),
                    path=img / f"peers_{problem}.png",
                )


@run.options
def _(parser):
    parser.add_argument("--problems", nargs="*", choices=PROBLEMS, help="default: all (GPU: "
                        "function)")  # fmt: skip
    parser.add_argument("--tools", nargs="*", choices=list(TOOL_LABEL), help="default: all (GPU: "
                        "cupyx_lsmr)")  # fmt: skip
    parser.add_argument("--img", default=None, help="plot folder (default docs/img, or --out)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw table and plots only")
    parser.add_argument("--row-timeout", type=int, default=600, help="seconds per row process")
    parser.add_argument("--redo", nargs="*", default=[], help="problem:key rows to run again")


# ---------------------------------------------------------------------- outputs
def _fmt_bytes(b):
    if b is None:
        return ""
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


COLUMNS = [
    ("tool", "tool"),
    ("rel_l2:.3e", "test rel. L2"),
    ("wall_s:.1f", "wall (s)"),
    (lambda r: _fmt_bytes(r.get("peak_mem_bytes")), "peak mem"),
    ("products", "products"),
    (lambda r: r.get("absent") or r.get("settings", ""), "settings / why absent"),
]


def _markdown(rec, args) -> str:
    intro = (
        "Each row ran in a fresh subprocess (`--quick`: in-process); `peak mem` is that "
        "process's peak RSS over the row (problem setup included). `products`: JVPs + VJPs "
        "(lsr_scale, curvlinops), gradient evaluations (training), or the per-row VJPs that "
        "built the dense Jacobian (dense rows; their solver then used dense matvecs). Continued "
        "training ran for the wall time of the slowest lsr_scale row on that problem (capped at "
        f"{BUDGET_CAP_S:.0f} s). The machine is shared: wall times are noisy (1-min load "
        "average recorded per row in the JSON)."
    )
    order = {k: i for i, (k, _) in enumerate(TOOLS)}
    sections = [intro]
    for problem in PROBLEMS:
        rows = sorted(
            (r for r in rec.rows if r["problem"] == problem), key=lambda r: order[r["key"]]
        )
        if rows:
            n, m = rows[0].get("n_rows", 0), rows[0].get("n_params", 0)
            sections.append(
                f"## {problem} ({n:,} rows x {m:,} parameters)\n\n" + md_table(COLUMNS, rows)
            )
    return rec.markdown("lsr_scale and its peers", None, command=args.command, more=sections)


MARKERS = dict(
    subspace_default="o",
    krylov_default="s",
    subspace_best="h",
    krylov_best="D",
    curvlinops_lsmr="^",
    dense_lsmr="v",
    dense_lstsq="*",
    cupyx_lsmr="P",
)


def _draw(fig, ax, problem, rows):
    fig.set_size_inches(7.5, 4.8)
    for r in rows:
        if r.get("rel_l2") is None:
            continue
        if r["key"] == "trained":
            ax.axhline(r["rel_l2"], color="gray", ls="--", lw=1, label=r["tool"])
        elif r.get("curve"):
            cv = np.array(r["curve"], dtype=float)
            cv[0, 0] = max(cv[0, 0], 1e-1)
            ax.plot(cv[:, 0], cv[:, 1], "-", label=r["tool"])
        elif r.get("wall_s"):
            ax.plot(r["wall_s"], r["rel_l2"], MARKERS.get(r["key"], "o"), ms=8, label=r["tool"])
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="wall time (s), CPU, 1 thread",
        ylabel="test rel. L2",
        title=f"{problem}: test error against wall time",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
