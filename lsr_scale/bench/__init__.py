"""Benchmark suites behind ``lsr-scale bench SUITE`` (installed with the package, so they run
from a pip install too).

The registry below names each suite's module; a module is imported only when its suite runs,
so ``lsr-scale bench --list`` and ``import lsr_scale`` stay fast. Every suite is built on the
shared harness :mod:`lsr_scale.bench._harness` and writes
``<out>/<suite>_<device>.{json,md,png}`` (``--out`` defaults to ``bench/results`` under the
current directory).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

__all__ = ["SUITES", "SuiteUnavailable", "listing", "load", "main", "parser_for"]

#: name -> (module under lsr_scale.bench, one line for ``--list``)
SUITES: dict[str, tuple[str, str]] = {
    "products": ("products", "JVP and VJP product time against the forward pass, per model"),
    "lsmr": ("lsmr", "one LSMR iteration against one JVP + one VJP, and refine's peak memory"),
    "precond": ("precond", "preconditioners: build time, iterations, accuracy; rank sweep"),
    "precision": ("precision", "product and solve precision (float32/float64/bf16) vs accuracy"),
    "scale": ("scale", "Krylov refine time, memory and error as parameters and rows grow"),
    "pde": ("pde", "PDE residual products: plain autograd, forward Laplacian, torch.func"),
    "peers": ("peers", "lsr_scale beside curvlinops, dense scipy and continued training"),
    "distributed": ("distributed", "row-sharded LSMR over torch.distributed: speed-up"),
    "gpu": ("gpu", "every GPU check in one command (pytest -m cuda, kernels, scale, ...)"),
    "micro": ("micro", "pytest-benchmark micro-suite, compared with bench/baselines/"),
}


class SuiteUnavailable(RuntimeError):
    """A suite's module is missing or failed to import."""


def load(name: str):
    """Import the suite ``name`` and return its :class:`~lsr_scale.bench._harness.Suite`."""
    from ._harness import suites

    if name not in SUITES:
        raise SuiteUnavailable(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    module = f"{__name__}.{SUITES[name][0]}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            raise SuiteUnavailable(
                f"suite {name!r}: its module {module} is not installed in this version"
            ) from err
        raise SuiteUnavailable(f"suite {name!r} needs {err.name!r}, which is missing") from err
    found = suites().get(name)
    if found is None:
        raise SuiteUnavailable(f"suite {name!r}: {module} registers no runner named {name!r}")
    return found


def listing() -> str:
    """One line per suite: its name and what it measures (imports nothing)."""
    width = max(map(len, SUITES))
    return "\n".join(f"{n:<{width}}  {h}" for n, (_, h) in SUITES.items())


def parser_for(name: str) -> argparse.ArgumentParser:
    """The argument parser of suite ``name``: the common options and the suite's own."""
    from ._harness import add_common_arguments

    s = load(name)
    parser = argparse.ArgumentParser(
        prog=f"lsr-scale bench {name}",
        description=s.help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(parser)
    if s.configure is not None:
        s.configure(parser)
    return parser


def main(argv=None) -> int:
    """``lsr-scale bench [--list] SUITE [options]``."""
    from ._harness import prepare

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("--list", "-l", "list"):
        print(listing())
        return 0
    if argv[0] in ("-h", "--help"):
        print("usage: lsr-scale bench [--list] SUITE [--quick] [--out DIR] [options]\n")
        print("Suites (lsr-scale bench SUITE --help for a suite's options):\n" + listing())
        return 0
    name = argv[0]
    try:
        parser = parser_for(name)
    except SuiteUnavailable as err:
        print(f"lsr-scale bench: {err}", file=sys.stderr)
        return 2
    s = load(name)
    args = parser.parse_args(argv[1:])
    prepare(args, "lsr-scale bench " + shlex.join(argv))
    return int(s.run(args) or 0)
