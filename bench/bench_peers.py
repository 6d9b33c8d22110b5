"""lsr_scale side by side with what a user would pick instead (issue 12, part 1).

The same trained networks, the same machine, one row per tool:

* lsr_scale one-shot subspace LSR and Krylov LSR, with every default
  (``ls.refine(model, ...)`` on the model as trained) and with the best settings of
  ``docs/solvers.md`` (float64; Nystrom-from-SVD preconditioner; rank or iterations chosen
  on held-out validation data where the problem has labels);
* curvlinops: its ``JacobianLinearOperator`` converted to scipy, solved by
  ``scipy.sparse.linalg.lsmr`` (the closest existing matrix-free stack);
* ``scipy.sparse.linalg.lsmr`` and ``scipy.linalg.lstsq`` on the dense float64 Jacobian
  (built with ``torch.func.jacrev``), where it fits in memory and time;
* continued training from the same weights for the wall time of the slowest lsr_scale row:
  Adam (learning rate decaying 100x over the budget), L-BFGS (strong Wolfe), and our own
  few-line damped Gauss-Newton (Levenberg-Marquardt) on the dense Jacobian (small cases);
* cupyx ``lsmr`` on the GPU, when a GPU and cupy are available (otherwise the row says why).

Problems: the demo MLP (trained as ``lsr-scale demo`` does), the paper-size function MLP
(committed checkpoint), the Burgers DeepONet (committed checkpoint) and the Poisson PINN
(committed checkpoint, CPU-scaled case). The classification peers (continued Adam, L-BFGS, a
linear probe, the last layer alone, against ``loss="cross_entropy"``) are rows of
``bench/classification.py``: their measure is test accuracy and training cross-entropy, not
this table's relative L2.

Each row runs in a fresh subprocess (so its peak memory is its own) and is written to
``bench/results/peers_cpu.json`` as soon as it exists; a rerun resumes from the recorded rows.
The markdown table, the plots ``docs/img/peers_<problem>.png`` and the JSON are rewritten
after every row.

    python bench/bench_peers.py --threads 1            # all problems (long: see docs/peers.md)
    python bench/bench_peers.py --problems demo        # one problem
    python bench/bench_peers.py --plot-only            # redraw table and plots from the JSON
    python bench/bench_peers.py --quick --out /tmp/p   # tiny smoke run, in-process
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv:  # numpy/scipy BLAS threads as torch's, set before numpy loads
    _t = sys.argv[sys.argv.index("--threads") + 1]
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_v, _t)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call, jacrev, jvp, vjp, vmap  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import lsr_scale as ls  # noqa: E402
from lsr_scale._utils import PeakMemory  # noqa: E402
from lsr_scale.precond import Nystrom  # noqa: E402

OUT = ROOT / "results" / "peers_cpu"
IMG = ROOT.parent / "docs" / "img"
CACHE = Path(os.environ.get("LSR_PEERS_CACHE", Path(tempfile.gettempdir()) / "lsr_peers_cache"))

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


# ---------------------------------------------------------------------- problems
def _flat_names(p):
    return list(p.keys())


def _to_vec(d, names):
    return torch.cat([d[k].reshape(-1) for k in names])


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

        names = _flat_names(p)
        row = 0
        for i in range(0, len(x), 256):
            jd = vmap(jacrev(f1), in_dims=(None, 0))(p, x[i : i + 256])
            blk = torch.cat([jd[k].reshape(jd[k].shape[0], -1) for k in names], 1)
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
    CACHE.mkdir(parents=True, exist_ok=True)
    ck = CACHE / f"demo{'_quick' if quick else ''}.pt"
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

    CACHE.mkdir(parents=True, exist_ok=True)
    ck = CACHE / "burgers_data.pt"
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
        names = _flat_names(p)
        s_pde = math.sqrt(n_tot / prob.n_interior)
        s_bc = math.sqrt(prob.bc_weight * n_tot / prob.n_boundary)
        row = 0
        for i in range(0, prob.n_interior, 200):
            blk = prob.blocks(net, x_int=prob.x_int[i : i + 200])["pde"]
            jd = jacrev(blk)(p)
            j = torch.cat([jd[k].reshape(jd[k].shape[0], -1) for k in names], 1) * s_pde
            out[row : row + j.shape[0]] = j.numpy()
            row += j.shape[0]
        jd = jacrev(prob.blocks(net)["bc"])(p)
        out[row:] = (
            torch.cat([jd[k].reshape(jd[k].shape[0], -1) for k in names], 1) * s_bc
        ).numpy()
        return out

    c.dense_jac = dense_jac
    c = _finish(c)
    c.curv_data_fix = True
    return c


CASES = {"demo": demo_case, "function": function_case, "burgers": burgers_case,
         "poisson": poisson_case}  # fmt: skip

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
                c.model64, method=method, validation=c.validation, dtype=torch.float64,
                **c.refine64, **kw,
            )  # fmt: skip
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
            p.values(), lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe",
            tolerance_grad=0.0, tolerance_change=0.0,
        )  # fmt: skip
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


def _cupyx_row(c, cfg, quick):
    if not torch.cuda.is_available():
        return dict(absent="no GPU on this machine (torch.cuda.is_available() is False)")
    try:
        import cupy as cp
        from cupyx.scipy.sparse.linalg import LinearOperator as CuLO
        from cupyx.scipy.sparse.linalg import lsmr as culsmr
    except ImportError:
        return dict(absent="cupy is not installed (pip install '.[cuda]')")
    # matrix-free: torch.func JVP/VJP of the residual on the GPU, cupyx lsmr on top
    dev = torch.device("cuda")
    c.model64.to(dev)
    cached = {k: v.to(dev) for k, v in c.p0.items()}
    res = lambda p: c.residual(p)  # noqa: E731  (closures hold CPU data: moved below)
    try:
        c.residual(cached)
    except RuntimeError:
        return dict(absent="this problem's residual closure holds CPU tensors; GPU row not wired")
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
    x = torch.as_tensor(out[0], device=dev).cpu()
    c.model64.to("cpu")
    return dict(rel_l2=c.lin_err(_to_dict(x, c.p0)), products=cnt.mv + cnt.rmv, device="cuda")


def run_row(problem, key, quick, budget):
    """Build the case and run one row in this process; returns the row dict."""
    t_setup = time.perf_counter()
    c = CASES[problem](quick)
    t_setup = time.perf_counter() - t_setup
    cfg = (QUICK_SETTINGS if quick else SETTINGS)[problem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        with PeakMemory("cpu") as pm:
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
def _load(path):
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def _budget(doc, problem, quick):
    if quick:
        return 1.0
    walls = [r["wall_s"] for r in doc["rows"] if r["problem"] == problem and r["key"] in LSR_ROWS]
    walls = [w for w in walls if w]
    return min(BUDGET_CAP_S, max(walls)) if walls else 60.0


def _subprocess_row(problem, key, args, budget):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        tmp = f.name
    cmd = [
        sys.executable, __file__, "--worker", problem, key, "--threads", str(args.threads),
        "--budget", str(budget), "--worker-out", tmp,
    ]  # fmt: skip
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=args.row_timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return dict(
                problem=problem, key=key, tool=TOOL_LABEL[key], rel_l2=None, wall_s=None,
                peak_mem_bytes=None, products=None, device="cpu",
                absent="failed: " + " | ".join(tail),
            )  # fmt: skip
        return json.loads(Path(tmp).read_text())
    except subprocess.TimeoutExpired:
        return dict(
            problem=problem, key=key, tool=TOOL_LABEL[key], rel_l2=None,
            wall_s=None, peak_mem_bytes=None, products=None, device="cpu",
            absent=f"timed out: no result within {args.row_timeout} s on this shared CPU "
            f"(ran {time.perf_counter() - t0:.0f} s)",
        )  # fmt: skip
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per row")
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=PROBLEMS)
    ap.add_argument("--tools", nargs="*", default=[k for k, _ in TOOLS], choices=list(TOOL_LABEL))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, in-process (smoke test)")
    ap.add_argument("--out", default=None, help="output prefix (default bench/results/peers_cpu)")
    ap.add_argument("--img", default=None, help="plot directory (default docs/img)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--plot-only", action="store_true", help="redraw table and plots only")
    ap.add_argument("--row-timeout", type=int, default=600, help="seconds per row subprocess")
    ap.add_argument("--redo", nargs="*", default=[], help="problem:key rows to run again")
    ap.add_argument("--worker", nargs=2, metavar=("PROBLEM", "TOOL"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        row = run_row(*args.worker, quick=args.quick, budget=args.budget)
        Path(args.worker_out).write_text(json.dumps(row, default=float))
        return row
    if args.quick and "poisson" not in args.problems and "demo" not in args.problems:
        ap.error("--quick: only demo and poisson have quick sizes")
    out = Path(args.out) if args.out else OUT
    img = Path(args.img) if args.img else (out.parent if args.out else IMG)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    doc = _load(path)
    doc["device"] = (
        f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s) "
        f"per row, torch {torch.__version__}"
    )
    doc["command"] = "python bench/bench_peers.py --threads " + str(args.threads)
    if not args.plot_only:
        redo = {tuple(s.split(":")) for s in args.redo}
        doc["rows"] = [r for r in doc["rows"] if (r["problem"], r["key"]) not in redo]
        for problem in args.problems:
            for key in args.tools:  # in the order given (default: TOOLS)
                if any(
                    r["problem"] == problem and r["key"] == key and not r.get("pending")
                    for r in doc["rows"]
                ):
                    continue
                # a placeholder ("pending": a row a session had no time for) is replaced
                doc["rows"] = [
                    r for r in doc["rows"] if not (r["problem"] == problem and r["key"] == key)
                ]
                budget = _budget(doc, problem, args.quick)
                t0 = time.perf_counter()
                if args.quick:
                    row = run_row(problem, key, quick=True, budget=budget)
                else:
                    row = _subprocess_row(problem, key, args, budget)
                row["load_1min"] = os.getloadavg()[0]
                row["date"] = time.strftime("%Y-%m-%d %H:%M")
                doc["rows"].append(row)
                path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
                print(
                    f"{problem:9s} {key:17s} rel_l2={row.get('rel_l2')} wall={row.get('wall_s')} "
                    f"({time.perf_counter() - t0:.0f} s) {row.get('absent', '')}",
                    flush=True,
                )
                write_markdown(doc, out.with_suffix(".md"))
    write_markdown(doc, out.with_suffix(".md"))
    if not args.no_plot:
        plot(doc, img)
    return doc


# ---------------------------------------------------------------------- outputs
def _fmt_bytes(b):
    if b is None:
        return ""
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def write_markdown(doc, path):
    lines = [
        "# lsr_scale and its peers",
        "",
        f"Device: {doc['device']}. Command: `{doc['command']}`. Each row ran in a fresh "
        "subprocess; `peak mem` is that process's peak RSS over the row (problem setup "
        "included). `products`: JVPs + VJPs (lsr_scale, curvlinops), gradient evaluations "
        "(training), or the per-row VJPs that built the dense Jacobian (dense rows; their "
        "solver then used dense matvecs). Continued training ran for the wall time of the "
        "slowest lsr_scale row on that problem (capped at "
        f"{BUDGET_CAP_S:.0f} s). The machine is shared: wall times are noisy (1-min load "
        "average recorded per row in the JSON).",
        "",
    ]
    for problem in PROBLEMS:
        rows = [r for r in doc["rows"] if r["problem"] == problem]
        if not rows:
            continue
        r0 = rows[0]
        lines += [
            f"## {problem} ({r0.get('n_rows', 0):,} rows x {r0.get('n_params', 0):,} parameters)",
            "",
            "| tool | test rel. L2 | wall (s) | peak mem | products | settings / why absent |",
            "|---|---:|---:|---:|---:|---|",
        ]
        order = {k: i for i, (k, _) in enumerate(TOOLS)}
        for r in sorted(rows, key=lambda r: order[r["key"]]):
            err = "" if r.get("rel_l2") is None else f"{r['rel_l2']:.3e}"
            wall = "" if r.get("wall_s") is None else f"{r['wall_s']:.1f}"
            prod = "" if r.get("products") is None else f"{r['products']:,}"
            note = r.get("absent") or r.get("settings", "")
            lines.append(
                f"| {r['tool']} | {err} | {wall} | {_fmt_bytes(r.get('peak_mem_bytes'))} "
                f"| {prod} | {note} |"
            )
        lines.append("")
    Path(path).write_text("\n".join(lines))


def plot(doc, img):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    img = Path(img)
    img.mkdir(parents=True, exist_ok=True)
    markers = dict(
        subspace_default="o", krylov_default="s", subspace_best="O", krylov_best="D",
        curvlinops_lsmr="^", dense_lsmr="v", dense_lstsq="*", cupyx_lsmr="P",
    )  # fmt: skip
    for problem in PROBLEMS:
        rows = [r for r in doc["rows"] if r["problem"] == problem]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
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
                mk = markers.get(r["key"], "o")
                mk = "h" if mk == "O" else mk
                ax.plot(r["wall_s"], r["rel_l2"], mk, ms=8, label=r["tool"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s), CPU, 1 thread")
        ax.set_ylabel("test rel. L2")
        ax.set_title(f"{problem}: test error against wall time")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(img / f"peers_{problem}.png", dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    main()
