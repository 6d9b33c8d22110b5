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
took 11.

``--loss softmax_mse`` solves the paper's residual instead (softmax outputs against the
labels, linearized through the softmax: each image's rows of ``J`` times
``diag(p) - p p^T``). That network already fits its training images (loss 2.6e-3). The rows
add which test images changed, each with its top two probabilities before the refine (a
lost image on a tie is a coin flip, not a lost margin), and the median over test images of
the largest probability change; ``ls.refine``'s subspace default runs in float64 too, and
the exact interpolating solve stops at the numerical rank (each image's rows sum to zero)::

    python bench/classification_rank_study.py --threads 1   # 7 min on this 2-core CPU
    python bench/classification_rank_study.py --threads 1 --train 200  # the network trained
                                                  # on 200 images: 1 min (_train200 files)
    python bench/classification_rank_study.py --quick  # the same, as a smoke run (_quick files)
    python bench/classification_rank_study.py --threads 1 --loss softmax_mse  # 7 min
                                                  # (_softmax_mse files)

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
COLUMNS_SOFTMAX = [
    *COLUMNS[:5],
    (lambda r: f"{r['median_dp']:.2g}", "median test Δp"),
    (lambda r: _flips_text(r["flips"]), "changed images"),
    COLUMNS[5],
]


def _flips_text(flips: list, most: int = 6) -> str:
    """The changed test images, each lost or won with its top two probabilities before (the
    first ``most``; then how many more were lost and won)."""

    def one(f):
        top = "/".join(f"{p:.3f}" for p in f["top2"])
        return f"{'won' if f['now_correct'] else 'lost'} #{f['image']} ({top})"

    text = "; ".join(one(f) for f in flips[:most]) or "none"
    rest = flips[most:]
    if rest:
        won = sum(f["now_correct"] for f in rest)
        text += f"; and {len(rest) - won} more lost, {won} more won"
    return text


def _softmax_rows(J: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The Jacobian of the softmax outputs from that of the logits: each image's ``C`` rows
    of ``J`` (``(N*C, n)``) times ``diag(p_i) - p_i p_i^T``."""
    n_img, c = p.shape
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("icd,idn->icn", H, J.view(n_img, c, -1)).reshape(n_img * c, -1)


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
                       help="training images (the network is trained on them)"),
        p.add_argument("--loss", choices=("mse", "softmax_mse"), default="mse",
                       help="the residual: logits against one-hot rows, or softmax outputs")),
        argv)  # fmt: skip
    n_train = 200 if args.quick else args.train
    softmax = args.loss == "softmax_mse"
    stem = "classification_rank_study"
    if n_train != cls.FULL["digits_train"] and not args.quick:
        stem += f"_train{n_train}"
    if softmax:
        stem += "_softmax_mse"
    d = cls.load("digits", n_train)
    net = cls.trained_cnn(d, "digits", cls.FULL["levels"]["long"], seed=args.seed)
    t_start = time.perf_counter()
    rec = Record(stem, out=args.out, device="cpu", quick=args.quick)
    rec.set(seed=args.seed, n_train=n_train, n_params=sum(p.numel() for p in net.parameters()))
    y, yt = d["y"], d["yt"]
    one_hot = F.one_hot(y, 10).float()
    test_one_hot = F.one_hot(yt, 10).double()
    logits_test = cls.outputs(net, d["xt"])
    base_test = int((logits_test.argmax(-1) == yt).sum())
    p_test = torch.softmax(logits_test.double(), -1)

    def add(solve, pred_train, pred_test, loss_after, delta_norm, **extra):
        row = dict(
            solve=solve, test_change=int((pred_test.argmax(-1) == yt).sum()) - base_test,
            test_mse=float(((pred_test.double() - test_one_hot) ** 2).sum(1).mean()),
            train_acc=cls.accuracy(pred_train, y), loss_after=loss_after,
            delta_norm=delta_norm, **extra,
        )  # fmt: skip
        if softmax:  # pred_test: probabilities, linearized
            row["median_dp"] = float((pred_test.double() - p_test).abs().amax(1).median())
            row["flips"] = cls._flips(net, d, pred_test)
        print(f"{solve}: {row['test_change']:+d} test images, loss {loss_after:.4g}", flush=True)
        rec.add(row, key=("solve",))

    runs = [("ls.refine, Subspace() defaults", "subspace", None),
            ("ls.refine, Krylov() defaults", "krylov", None)]  # fmt: skip
    if softmax:  # is float32 the cause of what the subspace default changes?
        runs.append(("ls.refine, Subspace() defaults, dtype=torch.float64", "subspace",
                     torch.float64))  # fmt: skip
    for name, method, dtype in runs:
        if rec.has(solve=name):
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-hot hint: this study is its reason
            r = ls.refine(net, data=(d["x"], y if softmax else one_hot), method=method,
                          loss=args.loss, progress_bar=False, dtype=dtype,
                          generator=torch.Generator().manual_seed(cls.SEED_REFINE))  # fmt: skip
        x_train, x_test = (d[k] if dtype is None else d[k].to(dtype) for k in ("x", "xt"))
        add(
            name,
            cls.outputs(r, x_train),
            cls.outputs(r, x_test),
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
    if softmax:  # the residual and its Jacobian through the softmax
        f0, f0t = torch.softmax(f0, -1), torch.softmax(f0t, -1)
        J, Jt = _softmax_rows(J, f0), _softmax_rows(Jt, f0t)
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

    full = J.shape[0]
    if softmax:  # each image's rows sum to zero: J has at most N (C - 1) nonzero directions
        full = int((evals > evals[0] * J.shape[0] * torch.finfo(evals.dtype).eps).sum())
        rec.set(numerical_rank=full)
    for k in (*(k for k in KS if k < full), full):
        w = torch.zeros_like(evals)
        w[:k] = 1 / evals[:k]
        solved(f"truncated SVD, rank {k}" + (" (interpolates)" if k == full else ""), w)
    for c in RIDGE:
        solved(f"ridge, λ = {c:g} σ₁²", 1 / (evals + c * evals[0]))

    rec.set(wall_s=time.perf_counter() - t_start)  # this run's, resumed rows not counted
    what = "softmax outputs against the labels" if softmax else "mse on one-hot targets"
    notes = [
        f"The network trained long with cross-entropy on {n_train} images classifies "
        f"{base_test} of "
        f"{len(yt)} test images; 'test images' is the change. Loss: 0.5 ||J d + r||^2 "
        f"(before: {rec.meta['loss_before']:.4g}). The truncated SVD at rank k is the "
        "subspace route's limit for an exact range finder."
    ]
    if softmax:
        notes.append(
            "'median test Δp': the median over test images of the largest change of a "
            "class probability; 'changed images': the test images whose correctness changed, "
            "each with its top two probabilities before the refine."
        )
    md = rec.markdown(
        f"{what}: exact truncations and ridge (digits CNN, seed {args.seed})",
        COLUMNS_SOFTMAX if softmax else COLUMNS,
        command="python bench/classification_rank_study.py --threads 1"
        + (" --quick" if args.quick else "")
        + (f" --train {n_train}" if "_train" in stem else "")
        + (" --loss softmax_mse" if softmax else ""),
        notes=notes,
    )
    print(md)


if __name__ == "__main__":
    main()
