"""Burgers DeepONet: test error against the subspace rank k, one streamed run for all k.

    python bench/burgers_rank_curve.py --baseline authors_tanh --kmax 9000 [--fraction 0.5]
    python bench/burgers_rank_curve.py --figure          # docs/img/burgers_curve.png only

One streamed basis of ``kmax`` columns (``lsr_scale.refine._streaming``: neither ``G0 Omega``
nor ``G0 P`` is stored) and one Gram of ``G0 P`` give, by nested Cholesky, the exact
subspace solution of every rank ``k <= kmax``; the rows at the paper's ranks go to
``docs/results/burgers_curve.json`` as soon as they exist. Resumable: the basis, Gram and
test products of an interrupted run are kept under ``bench/results/burgers_curve_state/``
(one file per finished stage), and rows already in the JSON are skipped.

Errors: ``rel_l2`` is the aggregate relative L2 over the 50 test functions (the library's
convention); ``mean_rel_l2`` is the mean of per-function relative L2s (the paper's "Error
mean"). ``train_loss`` is the linearized training MSE the authors choose k by.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import lsr_scale as ls
from lsr_scale._utils import PeakMemory
from lsr_scale.models import DeepONet, MultiONet
from lsr_scale.problems._burgers import BurgersProblem, DeepONetGrid
from lsr_scale.problems._checkpoint import checkpoint_path, load_checkpoint
from lsr_scale.refine._streaming import (
    ColumnMask,
    draw_mask,
    reduced_gram,
    solve_nested,
    streamed_basis,
)

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "docs" / "results" / "burgers_curve.json"
STATE = ROOT / "bench" / "results" / "burgers_curve_state"
FIG = ROOT / "docs" / "img" / "burgers_curve.png"
PAPER_TANH = {1000: 1.02e-2, 2000: 7.2e-3, 3000: 5.6e-3, 5000: 4.1e-3, 7000: 2.6e-3,
              9000: 2.05e-3, 11000: 2.2e-3, 14000: 3.4e-3}  # fmt: skip
PAPER_TANH_TRAINED = 1.08e-2
PAPER_RELU = {"trained": 3.6e-3, 18000: 2.8e-4}
# the authors' MultiONetCartesian_Tanh_p1 log (viscid data, all parameters, one GPU): mean rel. L2
PAPER_MULTIONET = {"trained": 7.48e-3, 1000: 3.83e-3, 4000: 1.38e-3, 9000: 3.78e-4, 14000: 1.19e-4}
PAPER_MULTIONET_MEM = {1000: 2.2e9, 4000: 8.8e9, 9000: 20.5e9, 14000: 32.4e9}
PAPER_MULTIONET_TIME = {1000: 2.3, 4000: 10.6, 9000: 52.0, 14000: 158.0}
RANKS = [250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 11000,
         14000, 18000]  # fmt: skip
BASELINES = {  # checkpoint, activation, data set (BurgersProblem(dataset=...))
    "old_tanh": ("burgers_deeponet", "tanh", "periodic"),
    "authors_tanh": ("burgers_deeponet_authors_tanh", "tanh", "periodic"),
    "authors_relu": ("burgers_deeponet_authors_relu", "relu", "periodic"),
    "viscid_tanh": ("burgers_viscid_authors_tanh", "tanh", "viscid"),
    "viscid_relu": ("burgers_viscid_authors_relu", "relu", "viscid"),
    "viscid_tanh_4k": ("burgers_viscid_authors_tanh_4k", "tanh", "viscid"),
    "viscid_multionet_tanh": ("burgers_viscid_authors_tanh_multionet", "tanh", "viscid"),
    "viscid_multionet_tanh_8k": ("burgers_viscid_authors_tanh_multionet_8k", "tanh", "viscid"),
    "viscid_multionet_tanh_n4000": (
        "burgers_viscid_authors_tanh_multionet_n4000",
        "tanh",
        "viscid",
    ),  # 4,000 functions
}
N_TRAIN = {"viscid_multionet_tanh_n4000": 4000}  # training functions, where not the paper's 1,000
MULTIONET_JSON = ROOT / "docs" / "results" / "multionet.json"


def build_net(baseline: str, dtype=torch.float32):
    """The baseline's network with its trained weights, and the checkpoint's metadata.

    ``viscid_multionet_*`` baselines are ``MultiONet([128 | 1, 64 x 5])``
    (``bench/train_burgers_authors.py --arch multionet``); the others our DeepONet
    ``[128 | 1, 128 x 4]``.
    """
    name, act, _ = BASELINES[baseline]
    if "multionet" in baseline:
        net = MultiONet([128] + [64] * 5, [1] + [64] * 5, activation=act)
    else:
        net = DeepONet([128] + [128] * 4, [1] + [128] * 4, activation=act)
    net = net.to(dtype)
    return net, load_checkpoint(net, checkpoint_path(name))


def results_json(baseline: str) -> Path:
    """Where a baseline's rows go: the MultiONet's to ``docs/results/multionet.json``."""
    return MULTIONET_JSON if "multionet" in baseline else JSON


def load_rows(path: Path = JSON):
    return json.loads(path.read_text()) if path.exists() else []


def save_row(row, path: Path = JSON):
    rows = load_rows(path)
    rows = [r for r in rows if _key(r) != _key(row)] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _key(r):
    return (
        r["method"],
        r["baseline"],
        r.get("config"),
        r.get("fraction"),
        r.get("rank"),
        r.get("kmax"),
        r.get("route"),
    )


def errors(pred, s):
    pred, s = pred.double(), s.double()
    agg = float((pred - s).norm() / s.norm())
    return agg, float(((pred - s).norm(dim=1) / s.norm(dim=1)).mean())


def run_tag(baseline: str, kmax: int, fraction: float | None, seed: int, route: str) -> str:
    """The name of a curve run's state folder and spectrum file."""
    return f"{baseline}_k{kmax}_p{fraction or 1}_s{seed}" + ("_dense" if route == "dense" else "")


def setup(baseline: str, fraction: float | None, chunk: int, seed: int) -> SimpleNamespace:
    """The float64 baseline, its training and test Jacobians, and their column masks.

    The mask is the first draw from ``Generator().manual_seed(seed)``; the returned
    generator ``g`` continues from it. ``bench/burgers_filters.py`` calls this too, so both
    scripts refine the same parameters.
    """
    name, act, dataset = BASELINES[baseline]
    prob = BurgersProblem(dataset=dataset, dtype=torch.float64, n_train=N_TRAIN.get(baseline, 1000))
    torch.manual_seed(prob.seed)
    net, meta = build_net(baseline, torch.float64)
    view = DeepONetGrid(net, y=prob.y)
    J = ls.JacobianOperator.from_module(
        view, (prob.u_train,), prob.s_train, chunk_size=chunk, batch_size=64
    )
    Jt = ls.JacobianOperator.from_module(view, (prob.u_test,), None, batch_size=64)
    g = torch.Generator().manual_seed(seed)
    idx = draw_mask(J.shape[1], fraction, g) if fraction else None
    return SimpleNamespace(
        name=name, act=act, dataset=dataset, prob=prob, meta=meta, J=J, Jt=Jt, g=g,
        b=-J.residual.reshape(-1), q0=Jt.residual.reshape(prob.n_test, -1),
        Jm=ColumnMask(J, idx) if idx is not None else J,
        Jtm=ColumnMask(Jt, idx) if idx is not None else Jt,
    )  # fmt: skip


def run(
    baseline: str, kmax: int, fraction: float | None, chunk: int, seed: int, route: str = "streamed"
) -> None:
    torch.set_num_threads(1)
    S = setup(baseline, fraction, chunk, seed)
    name, act, dataset, prob, meta = S.name, S.act, S.dataset, S.prob, S.meta
    J, g, b, q0, Jm, Jtm = S.J, S.g, S.b, S.q0, S.Jm, S.Jtm
    n, m = J.shape
    tag = run_tag(baseline, kmax, fraction, seed, route)
    st = STATE / tag
    st.mkdir(parents=True, exist_ok=True)
    trained = errors(q0, prob.s_test)
    out = results_json(baseline)
    multi = "multionet" in baseline
    paper_trained = PAPER_TANH_TRAINED if act == "tanh" else PAPER_RELU["trained"]
    paper_curve = PAPER_TANH if act == "tanh" and not fraction else {}
    if multi:
        paper_trained, paper_curve = PAPER_MULTIONET["trained"], PAPER_MULTIONET
    common = dict(baseline=name, arch="multionet" if multi else "deeponet", quick=False,
                  activation=act, dataset=dataset, fraction=fraction, kmax=kmax,
                  seed=seed, n=n, m=m, m_refined=Jm.shape[1], dtype="float64 products/accumulation",
                  basis_dtype="float32", chunk_rows=chunk * 128)  # fmt: skip
    save_row(dict(method="trained", rel_l2=trained[0], mean_rel_l2=trained[1], rank=None,
                  iterations=None, wall_s=meta.get("train_wall_s"), peak_mem_bytes=None,
                  paper=paper_trained,
                  train_meta={k: meta.get(k) for k in ("recipe", "epochs", "train_wall_s",
                                                        "train_rel_l2")},
                  **common), out)  # fmt: skip
    times = json.loads((st / "times.json").read_text()) if (st / "times.json").exists() else {}
    with PeakMemory("cpu") as pm:
        f_basis = st / "basis.pt"
        if f_basis.exists():
            P, binfo = torch.load(f_basis, weights_only=False)
        else:
            t0 = time.perf_counter()
            if route == "dense":  # the paper's route: randomized SVD (n x (k+10) sketch stored)
                _, S, Vh = ls.randomized_svd(Jm, kmax, oversample=10, generator=g, block_size=64)
                P = (Vh.T / S).to(torch.float32)
                binfo = {"rank": kmax, "sketch_rank": kmax + 10, "r_diag": S.cpu()}
                del Vh
            else:
                P, binfo = streamed_basis(Jm, kmax, generator=g, basis_dtype=torch.float32)
            times["basis_s"] = time.perf_counter() - t0
            times["basis_products"] = [J.num_matvecs, J.num_rmatvecs]
            torch.save((P, binfo), f_basis)
            (st / "times.json").write_text(json.dumps(times))
        print(f"basis: rank {binfo['rank']} of {kmax}, {times.get('basis_s', 0):.0f} s", flush=True)
        f_gram = st / "gram.pt"
        if f_gram.exists():
            C, r, bb = torch.load(f_gram, weights_only=False)
        else:
            t0 = time.perf_counter()
            J.reset_counts()
            C, r, bb = reduced_gram(Jm, P, b)
            times["gram_s"] = time.perf_counter() - t0
            times["gram_products"] = [J.num_matvecs, J.num_rmatvecs]
            torch.save((C, r, bb), f_gram)
            (st / "times.json").write_text(json.dumps(times))
        print(f"gram: {times.get('gram_s', 0):.0f} s", flush=True)
        ranks = [k for k in RANKS if k <= binfo["rank"]]
        if binfo["rank"] not in ranks:
            ranks.append(binfo["rank"])
        t0 = time.perf_counter()
        coefs, sinfo = solve_nested(C, r, bb, ranks)
        times["solve_s"] = time.perf_counter() - t0
        f_test = st / "test_products.pt"
        if f_test.exists():
            JtP = torch.load(f_test, weights_only=False)
        else:
            t0 = time.perf_counter()
            JtP = torch.cat(
                [Jtm.matmat(P[:, j : j + 64].double()) for j in range(0, P.shape[1], 64)], 1
            )
            times["test_s"] = time.perf_counter() - t0
            torch.save(JtP, f_test)
            (st / "times.json").write_text(json.dumps(times))
    peak = pm.peak_bytes
    tl = sinfo["train_loss"]
    wall = sum(v for k2, v in times.items() if k2.endswith("_s"))
    prods = [times.get("basis_products", [0, 0])[i] + times.get("gram_products", [0, 0])[i]
             for i in range(2)]  # fmt: skip
    for k in ranks:
        c = coefs[k]
        kk = c.numel()
        pred = q0 + (JtP[:, :kk] @ c).reshape(prob.n_test, -1)
        agg, mean = errors(pred, prob.s_test)
        meth = "subspace_streamed" if route == "streamed" else "subspace_dense_rsvd"
        save_row(dict(method=meth, rel_l2=agg, mean_rel_l2=mean, rank=k,
                      rank_used=kk, iterations=None, wall_s=wall, peak_mem_bytes=peak,
                      train_loss=float(tl[kk - 1]) / n if kk else bb / n,
                      paper=paper_curve.get(k),
                      products={"jvp": prods[0], "vjp": prods[1], "test_jvp": P.shape[1]},
                      times=times, rank_cap=sinfo["rank_cap"], **common), out)  # fmt: skip
        print(f"k={k}: test {agg:.3e} (mean {mean:.3e}), train loss {float(tl[kk - 1]) / n:.3e}")
    # the spectrum estimate (diag of R_B, sample order), for the filter figure's damp axis
    spec = ROOT / "docs" / "results" / f"burgers_spectrum_{tag}.json"
    spec.write_text(json.dumps({"tag": tag, "r_diag": [float(v) for v in binfo["r_diag"]]}))
    # every rank's linearized training loss (the authors' choice of k), every 50th entry
    (st / "train_loss.json").write_text(json.dumps([float(v) / n for v in tl[::50]]))
    best = int(torch.argmin(tl)) + 1
    print(f"smallest linearized training loss at k={best} (of {sinfo['rank_cap']})")


def figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pk = sorted(PAPER_TANH)
    ax.plot(pk, [PAPER_TANH[k] / PAPER_TANH_TRAINED for k in pk], "k--o", label="paper, tanh")
    groups = {}
    for r in rows:
        if r["method"].startswith("subspace"):
            groups.setdefault((r["baseline"], r["fraction"], r["method"]), []).append(r)
    base = {(r["baseline"]): r for r in rows if r["method"] == "trained"}
    for (bl, frac, meth), rs in sorted(groups.items(), key=str):
        rs = sorted(rs, key=lambda r: r["rank"])
        t = base[bl]["mean_rel_l2"]
        short = bl.replace("burgers_", "").replace("deeponet", "periodic")
        lab = f"ours, {meth.split('_', 1)[1]}, {short}"
        lab += f", p={frac}" if frac else ""
        ax.plot([r["rank"] for r in rs], [r["mean_rel_l2"] / t for r in rs], "-o", label=lab)
    ax.set_xlabel("subspace rank k")
    ax.set_ylabel("test error / trained test error (mean per-function rel. L2)")
    ax.set_yscale("log")
    ax.set_ylim(0.08, 30)  # past the spectral cliff the errors run off the top (see the JSON)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Burgers DeepONet: one-shot LSR, error reduction against k", fontsize=10)
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIG, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", choices=sorted(BASELINES), default="authors_tanh")
    ap.add_argument("--kmax", type=int, default=9000)
    ap.add_argument("--fraction", type=float, default=None)
    ap.add_argument("--chunk", type=int, default=1000, help="functions per row block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--route", choices=["streamed", "dense"], default="streamed")
    ap.add_argument("--figure", action="store_true")
    a = ap.parse_args()
    if not a.figure:
        run(a.baseline, a.kmax, a.fraction, a.chunk, a.seed, a.route)
    figure()


if __name__ == "__main__":
    main()
