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

from lsr_scale.problems._checkpoint import checkpoint_path, save_checkpoint


def train_burgers(epochs: int) -> None:
    from lsr_scale.problems._burgers import BurgersProblem

    prob = BurgersProblem()
    net = prob.make_model()
    t0 = time.perf_counter()
    hist = prob.train(net, epochs=epochs, lr=1e-3, batch=prob.n_train, progress=True)
    wall = time.perf_counter() - t0
    err = prob.test_error(lambda inp: net.grid(*inp))
    print(f"burgers: {epochs} epochs, {wall:.0f} s, test rel L2 {err:.3e}")
    meta = dict(
        workload="burgers",
        epochs=epochs,
        lr=1e-3,
        train_wall_s=wall,
        test_rel_l2=err,
        loss_history=hist[::10],
        device="cpu",
        seed=prob.seed,
    )
    save_checkpoint(net, checkpoint_path("burgers_deeponet"), meta)


def train_antiderivative(epochs: int) -> None:
    from lsr_scale.problems._antiderivative import AntiderivativeProblem

    prob = AntiderivativeProblem()
    net = prob.make_model()
    t0 = time.perf_counter()
    hist = prob.train(net, epochs=epochs, progress=True)
    wall = time.perf_counter() - t0
    err = prob.test_error(net)
    print(f"antiderivative: {epochs} epochs, {wall:.0f} s, mean test rel L2 {err:.3e}")
    meta = dict(
        workload="antiderivative",
        epochs=epochs,
        train_wall_s=wall,
        test_rel_l2=err,
        loss_history=hist[::10],
        device="cpu",
        seed=prob.seed,
    )
    save_checkpoint(net, checkpoint_path("antiderivative_pideeponet"), meta)


def train_poisson(epochs: int) -> None:
    from lsr_scale.problems._poisson import CPU_CONFIG, PoissonProblem

    prob = PoissonProblem(**CPU_CONFIG)  # scaled down for the CPU; see CPU_CONFIG
    net = prob.make_model()
    t0 = time.perf_counter()
    hist = prob.train(net, epochs=epochs, progress=True)
    wall = time.perf_counter() - t0
    err = prob.test_error(net)
    print(f"poisson: {epochs} epochs, {wall:.0f} s, test rel L2 {err:.3e}")
    meta = dict(
        workload="poisson",
        epochs=epochs,
        train_wall_s=wall,
        test_rel_l2=err,
        loss_history=hist[::10],
        device="cpu",
        seed=prob.seed,
        widths=list(prob.widths),
        n_interior=prob.n_interior,
        n_boundary=prob.n_boundary,
    )
    save_checkpoint(net, checkpoint_path("poisson_pinn"), meta)


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
