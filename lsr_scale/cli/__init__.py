"""Command-line interface: ``lsr-scale demo``, ``reproduce``, ``info`` and ``bench``.

The entry point ``lsr_scale.cli:main``; the commands' runners live beside it (``_demo``,
``_reproduce``) or, for ``bench``, in :mod:`lsr_scale.bench`; they are the only code in the
package that prints.
"""

from __future__ import annotations

import argparse
import sys

from ..cuda import show_config
from ._demo import run_demo
from ._reproduce import add_reproduce_parser, run_reproduce

__all__ = ["main", "run_demo", "run_reproduce"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsr-scale",
        description="Matrix-free Linearized Subspace Refinement (LSR) of trained networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help=(
            "train a small MLP, refine it, print the error table (measured: 28 s of CPU time "
            "on one thread of a 2-core Intel Xeon)"
        ),
        description=(
            "Train a tanh MLP with Adam on sin(pi x) sin(pi y) over [-1,1]^2, then refine it "
            "with one-shot subspace LSR and with matrix-free Krylov LSR (unpreconditioned and "
            "preconditioned). Prints test relative L2 errors, reduction factors, time, peak "
            "memory and LSMR iterations; writes demo.json and demo.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--n-train", type=int, default=2000, help="training points")
    demo.add_argument("--width", type=int, default=32, help="hidden-layer width")
    demo.add_argument("--depth", type=int, default=3, help="number of hidden layers")
    demo.add_argument("--epochs", type=int, default=10000, help="Adam epochs (full batch)")
    demo.add_argument("--lr", type=float, default=3e-3, help="initial Adam learning rate")
    demo.add_argument(
        "--rank",
        type=int,
        default=600,
        help="subspace rank k of one-shot LSR (Krylov runs with its defaults)",
    )
    demo.add_argument(
        "--krylov-iters",
        type=int,
        default=300,
        help="LSMR iteration limit (the unpreconditioned run uses all of them)",
    )
    demo.add_argument(
        "--dtype",
        choices=("auto", "float64", "float32"),
        default="auto",
        help="refine(dtype=...): 'auto' passes none, so each method uses its default "
        "precision (training is float32)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for data, init and sketches")
    demo.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch default); the demo problem is fastest on one",
    )
    demo.add_argument("--out", default="lsr_demo_out", help="output directory")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=run_demo)

    info = sub.add_parser("info", help="print versions and which kernel paths are active")
    info.set_defaults(func=lambda a: show_config())

    add_reproduce_parser(sub)
    sub.add_parser(
        "bench",
        help="benchmark suites: lsr-scale bench --list, lsr-scale bench SUITE [--quick]",
        add_help=False,
    )  # parsed by lsr_scale.bench.main (each suite has its own options)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ..bench import main as bench_main  # imported only for this command

        return bench_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.func(args)
    return 0
