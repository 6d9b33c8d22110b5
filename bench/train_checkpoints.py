"""Train the workloads' baselines and write them to lsr_scale/problems/checkpoints/.

    python bench/train_checkpoints.py burgers [--epochs N] [--threads T]
    python bench/train_checkpoints.py antiderivative poisson

Every run is seeded; the JSON next to each checkpoint records the configuration, the
training time, the device and the test error, so results are reproducible.
"""

from __future__ import annotations

import argparse
import time

import torch

from lsr_scale.problems._antiderivative import AntiderivativeProblem
from lsr_scale.problems._burgers import BurgersProblem
from lsr_scale.problems._checkpoint import checkpoint_path, save_checkpoint
from lsr_scale.problems._poisson import CPU_CONFIG, PoissonProblem


def _train_and_save(workload, ck_name, prob, epochs, error, label, train_kw=None, **extra):
    """Train ``prob``'s model for ``epochs``, print ``label`` ``error(net)`` and save the
    checkpoint ``ck_name`` with its metadata (``lr`` when ``train_kw`` sets it, then ``extra``).
    """
    train_kw = train_kw or {}
    net = prob.make_model()
    t0 = time.perf_counter()
    hist = prob.train(net, epochs=epochs, progress=True, **train_kw)
    wall = time.perf_counter() - t0
    err = error(net)
    print(f"{workload}: {epochs} epochs, {wall:.0f} s, {label} {err:.3e}")
    meta = dict(
        workload=workload,
        epochs=epochs,
        **({"lr": train_kw["lr"]} if "lr" in train_kw else {}),
        train_wall_s=wall,
        test_rel_l2=err,
        loss_history=hist[::10],
        device="cpu",
        seed=prob.seed,
        **extra,
    )
    save_checkpoint(net, checkpoint_path(ck_name), meta)


def train_burgers(epochs: int) -> None:
    prob = BurgersProblem()
    _train_and_save(
        "burgers",
        "burgers_deeponet",
        prob,
        epochs,
        lambda net: prob.test_error(lambda inp: net.grid(*inp)),
        "test rel L2",
        train_kw=dict(lr=1e-3, batch=prob.n_train),
    )


def train_antiderivative(epochs: int) -> None:
    prob = AntiderivativeProblem()
    _train_and_save(
        "antiderivative",
        "antiderivative_pideeponet",
        prob,
        epochs,
        prob.test_error,
        "mean test rel L2",
    )


def train_poisson(epochs: int) -> None:
    prob = PoissonProblem(**CPU_CONFIG)  # scaled down for the CPU; see CPU_CONFIG
    _train_and_save(
        "poisson",
        "poisson_pinn",
        prob,
        epochs,
        prob.test_error,
        "test rel L2",
        widths=list(prob.widths),
        n_interior=prob.n_interior,
        n_boundary=prob.n_boundary,
    )


TRAINERS = {
    "burgers": (train_burgers, 40000),
    "antiderivative": (train_antiderivative, 20000),
    "poisson": (train_poisson, 3000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="+", choices=sorted(TRAINERS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for w in args.workloads:
        fn, default = TRAINERS[w]
        fn(args.epochs or default)


if __name__ == "__main__":
    main()
