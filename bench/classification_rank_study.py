"""Why ``loss="mse"`` by ``Subspace()`` loses test images on a CNN trained with cross-entropy.

Issue 17's long-trained digits CNN (``bench/classification.py``, seed 0: 27,370 parameters,
1,000 training images, 10,000 residual rows) refined with one-hot float targets and
``loss="mse"``: the subspace default (rank 1,000) lost test images on four of five such
networks, ``Krylov()`` gained on all five. This script takes the network's dense float64
Jacobian (``torch.func.jacrev``, train and test rows) and solves the same linearized problem
exactly, with no randomized range finder:

- the truncated SVD at rank k (the subspace route's exact limit, for a grid of k);
- ridge, ``min ||J d + r||^2 + lam ||d||^2`` for ``lam = c * sigma_1^2``;
- beside them, ``ls.refine`` itself: ``Subspace()`` and ``Krylov()`` at their defaults.

Each row gives the change in correctly classified test images (of 497), the training
accuracy, the linearized loss, the test squared error per image (what validation data would
choose a rank by) and ``||d||``. The SVD comes from the eigendecomposition of
``J J^T`` (10,000 x 10,000): 6 min for the Jacobians and that here, where the full SVD of J
took 11::

    python bench/classification_rank_study.py --threads 1   # 7 min on this 2-core CPU
    python bench/classification_rank_study.py --threads 1 --train 200  # the network trained
                                                  # on 200 images: 1 min (_train200 files)
    python bench/classification_rank_study.py --quick  # the same, as a smoke run (_quick files)

Writes ``bench/results/classification_rank_study_cpu.{json,md}``. Needs scikit-learn.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

import lsr_scale as ls
from lsr_scale.bench._harness import Record, parse_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification as cls  # noqa: E402  (the data, network and its training cache)

KS = (250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 7000)
RIDGE = (1e-8, 1e-7, 1e-6, 1e-5)  # lam / sigma_1^2
COLUMNS = [
    ("solve", "solve"),
    (lambda r: f"{r['test_change']:+d}", "test images"),
    (lambda r: f"{100 * r['train_acc']:.1f}%", "train acc."),
    (lambda r: f"{r['loss_after']:.4g}", "loss after"),
    (lambda r: f"{r['test_mse']:.3g}", "test squared error"),
    (lambda r: f"{r['delta_norm']:.3g}", "‖δ‖"),
]


def dense_jacobian(net: torch.nn.Module, x: torch.Tensor, rows: int = 100) -> torch.Tensor:
    """``d vec(net(x)) / d theta`` in float64, ``rows`` images at a time: (N*C, n)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xb):
        return functional_call(net, p, (xb,))

    blocks = []
    for i in range(0, len(x), rows):
        jac = jacrev(f)(params, x[i : i + rows])
        blocks.append(torch.cat([j.reshape(j.shape[0] * j.shape[1], -1) for j in jac.values()], 1))
    return torch.cat(blocks)


def main(argv=None):
    args = parse_script(__file__, __doc__, lambda p: (
        p.add_argument("--seed", type=int, default=cls.SEED_INIT, help="the network's init seed"),
        p.add_argument("--train", type=int, default=cls.FULL["digits_train"],
                       help="training images (the network is trained on them)")), argv)  # fmt: skip
    n_train = 200 if args.quick else args.train
    stem = "classification_rank_study"
    if n_train != cls.FULL["digits_train"] and not args.quick:
        stem += f"_train{n_train}"
    d = cls.load("digits", n_train)
    net = cls.trained_cnn(d, "digits", cls.FULL["levels"]["long"], seed=args.seed)
    t_start = time.perf_counter()
    rec = Record(stem, out=args.out, device="cpu", quick=args.quick)
    rec.set(seed=args.seed, n_train=n_train, n_params=sum(p.numel() for p in net.parameters()))
    y, yt = d["y"], d["yt"]
    one_hot = F.one_hot(y, 10).float()
    test_one_hot = F.one_hot(yt, 10).double()
    base_test = int((cls.outputs(net, d["xt"]).argmax(-1) == yt).sum())

    def add(solve, pred_train, pred_test, loss_after, delta_norm, **extra):
        row = dict(
            solve=solve, test_change=int((pred_test.argmax(-1) == yt).sum()) - base_test,
            test_mse=float(((pred_test.double() - test_one_hot) ** 2).sum(1).mean()),
            train_acc=cls.accuracy(pred_train, y), loss_after=loss_after,
            delta_norm=delta_norm, **extra,
        )  # fmt: skip
        print(f"{solve}: {row['test_change']:+d} test images, loss {loss_after:.4g}", flush=True)
        rec.add(row, key=("solve",))

    for name, method in (("ls.refine, Subspace() defaults", "subspace"),
                         ("ls.refine, Krylov() defaults", "krylov")):  # fmt: skip
        if rec.has(solve=name):
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-hot hint: this study is its reason
            r = ls.refine(net, data=(d["x"], one_hot), method=method, progress_bar=False,
                          generator=torch.Generator().manual_seed(cls.SEED_REFINE))  # fmt: skip
        add(
            name,
            cls.outputs(r, d["x"]),
            cls.outputs(r, d["xt"]),
            r.info["loss_linearized"],
            float(r.delta.norm()),
            wall_s=time.perf_counter() - t0,
            rank=r.info.get("rank"),
        )

    net64 = cls.trained_cnn(d, "digits", cls.FULL["levels"]["long"], seed=args.seed).double()
    t0 = time.perf_counter()
    J, Jt = dense_jacobian(net64, d["x"].double()), dense_jacobian(net64, d["xt"].double())
    with torch.no_grad():
        f0, f0t = net64(d["x"].double()), net64(d["xt"].double())
    r0 = (f0 - one_hot.double()).reshape(-1)
    evals, U = torch.linalg.eigh(J @ J.T)  # ascending; sigma^2 and the left vectors
    evals, U = evals.flip(0).clamp_min(0), U.flip(1)
    proj = U.T @ r0
    rec.set(jacobian_s=time.perf_counter() - t0, sigma_1=float(evals[0].sqrt()),
            rows=J.shape[0], loss_before=0.5 * float(r0 @ r0))  # fmt: skip

    def solved(name, weights):  # d = -J^T U diag(weights) U^T r0
        delta = -(J.T @ (U @ (weights * proj)))
        res = f0 + (J @ delta).view_as(f0) - one_hot.double()
        add(
            name,
            f0 + (J @ delta).view_as(f0),
            f0t + (Jt @ delta).view_as(f0t),
            0.5 * float((res**2).sum()),
            float(delta.norm()),
        )

    for k in (*(k for k in KS if k < J.shape[0]), J.shape[0]):
        w = torch.zeros_like(evals)
        w[:k] = 1 / evals[:k]
        solved(f"truncated SVD, rank {k}" + (" (interpolates)" if k == J.shape[0] else ""), w)
    for c in RIDGE:
        solved(f"ridge, λ = {c:g} σ₁²", 1 / (evals + c * evals[0]))

    rec.set(wall_s=time.perf_counter() - t_start)  # this run's, resumed rows not counted
    md = rec.markdown(
        f"mse on one-hot targets: exact truncations and ridge (digits CNN, seed {args.seed})",
        COLUMNS,
        command="python bench/classification_rank_study.py --threads 1"
        + (" --quick" if args.quick else "")
        + (f" --train {n_train}" if "_train" in stem else ""),
        notes=[
            f"The network trained long with cross-entropy on {n_train} images classifies "
            f"{base_test} of "
            f"{len(yt)} test images; 'test images' is the change. Loss: 0.5 ||J d + r||^2 "
            f"(before: {rec.meta['loss_before']:.4g}). The truncated SVD at rank k is the "
            "subspace route's limit for an exact range finder."
        ],
    )
    print(md)


if __name__ == "__main__":
    main()
