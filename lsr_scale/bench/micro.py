"""``lsr-scale bench micro``: the pytest-benchmark micro-suite.

Every case is a pair timed in the same run: the operation and a reference of the same size,
so its ``ratio`` (operation / reference) does not depend on how fast or loaded the machine is.

========================  ======================================  =============================
case                      operation                               reference
========================  ======================================  =============================
``jvp-<model>``           one JVP (mlp, deeponet, fourier,        the forward pass
                          transformer)
``vjp-<model>``           one VJP                                 the forward pass
``lsmr-iter``             10 LSMR iterations                      10 JVP + VJP pairs
``precond-apply``         Nystrom preconditioner apply            two GEMVs with an m x l matrix
``sketch-<kind>``         S @ X for each sketch in                a dense Gaussian S @ X of the
                          ``lsr_scale.sketch``                    same size
``predictor``             ``refined(x)``                          the network's forward pass
========================  ======================================  =============================

``lsr-scale bench micro`` runs the cases under pytest-benchmark (the test module
``lsr_scale/bench/test_micro.py``) and records each case's median and ratio;
``--compare`` reports each ratio against the stored baseline
``bench/baselines/micro_<device>.json`` (change = ratio now / ratio then), and
``--save-baseline`` stores this run as the baseline. ``tests/test_bench_micro.py`` runs
:data:`QUICK` with :func:`measure` and fails when a ratio exceeds its baseline by more than
:data:`TOLERANCE`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ._harness import Record, device_tag, suite, time_ratio

#: a ratio may grow by this factor over its baseline before the CI test fails: generous, so a
#: loaded 2-core CI machine does not flake, tight enough to catch a real regression
TOLERANCE = 2.5
#: the cases the default test run checks
QUICK = ("jvp-mlp", "vjp-mlp", "lsmr-iter", "precond-apply", "sketch-sparse_sign", "predictor")
BASELINES = Path("bench") / "baselines"
MODELS = {"mlp": 64, "deeponet": 40, "fourier": 16, "transformer": 32}


@dataclass
class Case:
    """An operation, its same-size reference, and what the reference is."""

    fn: Callable[[], object]
    ref: Callable[[], object]
    ref_name: str


def _forward(model, inputs):
    def forward():
        with torch.no_grad():
            model(*inputs)

    return forward


def _product(kind: str, which: str, device) -> Case:
    from ._models import operator

    J, v, u, model, inputs = operator(kind, MODELS[kind], 256, device)
    fn = (lambda: J.matvec(v)) if which == "jvp" else (lambda: J.rmatvec(u))
    return Case(fn, _forward(model, inputs), "forward pass")


def _lsmr(device) -> Case:
    import lsr_scale as ls

    from ._models import operator

    J, v, u, _, _ = operator("mlp", 64, 512, device)
    b = -J.residual

    def pairs():
        for _ in range(10):
            J.matvec(v), J.rmatvec(u)

    return Case(
        lambda: ls.lsmr(J, b, atol=0.0, btol=0.0, conlim=math.inf, maxiter=10),
        pairs,
        "10 JVP + VJP pairs",
    )


def _precond(device) -> Case:
    from lsr_scale.precond import NystromPreconditioner

    from ._models import operator

    J, v, _, _, _ = operator("mlp", 64, 512, device)
    rank = 50
    M = NystromPreconditioner(J, rank, generator=torch.Generator().manual_seed(0))
    U = torch.randn(J.shape[1], rank, generator=torch.Generator().manual_seed(1)).to(device)
    return Case(lambda: M.matvec(v), lambda: U @ (U.T @ v), f"U (U^T v), U: m x {rank}")


def _sketch(kind: str, device) -> Case:
    from lsr_scale.sketch import SKETCHES

    n, s, k = 4096, 256, 32
    g = torch.Generator().manual_seed(0)
    S = SKETCHES[kind](n, s, generator=g, device=device)
    X = torch.randn(n, k, generator=g).to(device)
    G = torch.randn(s, n, generator=g).to(device)
    return Case(lambda: S.matmat(X), lambda: G @ X, "dense Gaussian S @ X")


def _predictor(device) -> Case:
    import lsr_scale as ls

    from ._models import make

    model, (x,), y = make("mlp", 64, 512, device)
    with warnings.catch_warnings():  # 5 iterations: the maxiter warning is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        refined = ls.refine(
            model,
            data=(x, y),
            method=ls.Krylov(maxiter=5, preconditioner=None),
            progress_bar=False,
            generator=torch.Generator().manual_seed(0),
        )

    def predict():
        with torch.no_grad():
            refined(x)

    return Case(predict, _forward(model, (x,)), "forward pass")


def cases() -> dict[str, Callable[[torch.device], Case]]:
    """Every case name and its builder (builders are cheap to list, costly to call)."""
    from lsr_scale.sketch import SKETCHES

    out: dict[str, Callable] = {}
    for which in ("jvp", "vjp"):
        for kind in MODELS:
            out[f"{which}-{kind}"] = lambda d, k=kind, w=which: _product(k, w, d)
    out["lsmr-iter"] = _lsmr
    out["precond-apply"] = _precond
    for kind in SKETCHES:
        out[f"sketch-{kind}"] = lambda d, k=kind: _sketch(k, d)
    out["predictor"] = _predictor
    return out


def measure(names, device="cpu", repeat: int = 7) -> dict[str, dict]:
    """Each case's ``{"t", "t_ref", "ratio", "ref"}`` timed interleaved (no pytest-benchmark)."""
    builders = cases()
    out = {}
    for name in names:
        torch.manual_seed(0)
        c = builders[name](torch.device(device))
        out[name] = {
            **time_ratio(c.fn, c.ref, repeat=repeat, warmup=2, device=device),
            "ref": c.ref_name,
        }
    return out


def baseline_path(device, root=None) -> Path:
    """``<root>/micro_<device tag>.json`` (root: ``bench/baselines`` under the current
    directory)."""
    return Path(root or BASELINES) / f"micro_{device_tag(device)}.json"


def load_baseline(device, root=None) -> dict[str, dict] | None:
    """The stored baseline's cases (name -> row), or None when there is none."""
    try:
        doc = json.loads(baseline_path(device, root).read_text())
    except (OSError, ValueError):
        return None
    return {r["case"]: r for r in doc.get("rows", [])}


def compare(rows, base: dict[str, dict]) -> list[dict]:
    """Each row with ``change`` = its ratio / the baseline's ratio (> 1: slower than then,
    relative to its reference) and ``time_change`` = its median / the baseline's."""
    out = []
    for r in rows:
        b = base.get(r["case"])
        change = r["ratio"] / b["ratio"] if b else None
        tchg = r["t_us"] / b["t_us"] if b else None
        out.append(
            {
                **r,
                "base_ratio": b and b["ratio"],
                "change": change,
                "time_change": tchg,
                "regressed": bool(change and change > TOLERANCE),
            }
        )
    return out


def _run_pytest_benchmark(names, device, quick) -> dict[str, dict]:
    """Run ``test_micro.py`` under pytest-benchmark; name -> {"t", "t_ref"} medians (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).with_name("test_micro.py")),
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            "-o",
            "addopts=",
            f"--benchmark-json={path}",
            "--rootdir",
            tmp,
            "--benchmark-max-time=" + ("0.05" if quick else "0.5"),
            "--benchmark-min-rounds=" + ("5" if quick else "15"),
        ]
        env = {
            **os.environ,
            "LSR_BENCH_MICRO_CASES": ",".join(names),
            "LSR_BENCH_MICRO_DEVICE": str(device),
        }
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"pytest-benchmark failed:\n{proc.stdout[-3000:]}{proc.stderr}")
        doc = json.loads(path.read_text())
    out: dict[str, dict] = {}
    for b in doc["benchmarks"]:
        name, which = b["param"].rsplit("|", 1)
        row = out.setdefault(name, {"ref": b["extra_info"].get("reference", "")})
        row["t" if which == "op" else "t_ref"] = b["stats"]["median"]
    return out


COLUMNS = [
    ("case", "case"),
    (lambda r: f"{r['t_us']:.1f}", "median (us)"),
    (lambda r: f"{r['ref_us']:.1f}", "reference (us)"),
    ("ref", "reference"),
    ("ratio:.3f", "ratio"),
]
COMPARE = COLUMNS + [
    ("base_ratio:.3f", "baseline ratio"),
    (lambda r: "" if r["change"] is None else f"{r['change']:.2f}x", "ratio change"),
    (lambda r: "" if r["time_change"] is None else f"{r['time_change']:.2f}x", "time change"),
]


@suite("micro", "pytest-benchmark micro-suite, compared with bench/baselines/")
def run(args) -> int:
    names = list(QUICK if args.quick else cases())
    names = [n for n in names if not args.cases or any(c in n for c in args.cases)]
    if args.engine == "pytest-benchmark":
        res = _run_pytest_benchmark(names, args.device, args.quick)
    else:
        res = measure(names, args.device, repeat=5 if args.quick else 15)
    rec = Record("micro", out=args.out, device=args.device, quick=args.quick)
    rec.rows = []
    rec.set(command=args.command, engine=args.engine, tolerance=TOLERANCE)
    for n in names:
        t, tr = res[n]["t"], res[n]["t_ref"]
        rec.add(
            {
                "case": n,
                "t_us": 1e6 * t,
                "ref_us": 1e6 * tr,
                "ref": res[n]["ref"],
                "ratio": res[n].get("ratio", t / tr),
            },
            key=("case",),
        )
    rows, columns, notes, status = rec.rows, COLUMNS, [], 0
    if args.compare:
        base = load_baseline(args.device, args.baselines)
        if base is None:
            notes.append(f"No baseline at {baseline_path(args.device, args.baselines)}.")
        else:
            rows, columns = compare(rec.rows, base), COMPARE
            bad = [r["case"] for r in rows if r["regressed"]]
            notes.append(
                f"Ratio change = ratio / baseline ratio; tolerance {TOLERANCE}x. "
                + (f"REGRESSED: {', '.join(bad)}." if bad else "No regression.")
            )
            status = 1 if bad else 0
    if args.save_baseline:
        path = baseline_path(args.device, args.baselines)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**rec.meta, "rows": rec.rows}, indent=2) + "\n")
        notes.append(f"Saved as the baseline {path}.")
    print(
        rec.markdown(
            "Micro-benchmarks (operation / same-size reference)",
            columns,
            command=args.command,
            rows=rows,
            notes=notes,
        )
    )
    return status


@run.options
def _options(parser) -> None:
    parser.add_argument("--compare", action="store_true", help="ratios against the baseline")
    parser.add_argument("--save-baseline", action="store_true", help="store this run as it")
    parser.add_argument("--baselines", default=str(BASELINES), help="baseline folder")
    parser.add_argument("--cases", nargs="+", default=None, help="substrings of case names")
    parser.add_argument(
        "--engine",
        choices=("pytest-benchmark", "harness"),
        default="pytest-benchmark",
        help="time with pytest-benchmark, or interleaved by the harness",
    )
