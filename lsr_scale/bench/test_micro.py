"""The pytest-benchmark micro-suite (run by ``lsr-scale bench micro``; not collected by the
project's own test run). Each case is benchmarked twice, as ``<case>|op`` and
``<case>|ref`` (its same-size reference), so ratios can be formed from one run.

Select cases and the device with the environment variables ``LSR_BENCH_MICRO_CASES``
(comma-separated names) and ``LSR_BENCH_MICRO_DEVICE``.
"""

from __future__ import annotations

import os

import pytest
import torch

from lsr_scale.bench._harness import sync
from lsr_scale.bench.micro import cases

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device(os.environ.get("LSR_BENCH_MICRO_DEVICE") or "cpu")
NAMES = [n for n in (os.environ.get("LSR_BENCH_MICRO_CASES") or "").split(",") if n] or list(
    cases()
)
_BUILT: dict = {}


def _case(name):
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = cases()[name](DEVICE)
    return _BUILT[name]


@pytest.mark.parametrize("param", [f"{n}|{w}" for n in NAMES for w in ("op", "ref")])
def test_micro(benchmark, param):
    name, which = param.rsplit("|", 1)
    c = _case(name)
    fn = c.fn if which == "op" else c.ref
    benchmark.extra_info.update(case=name, which=which, reference=c.ref_name)
    benchmark(lambda: (fn(), sync(DEVICE)))
