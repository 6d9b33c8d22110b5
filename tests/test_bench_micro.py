"""The micro-suite's ratio check: each quick case's time over its same-size reference,
measured now, against the stored CPU baseline (``bench/baselines/micro_cpu.json``).

Fails only when a ratio grows by more than ``lsr_scale.bench.micro.TOLERANCE`` (2.5x): both
sides of a ratio are timed interleaved in this run, so a slow or loaded machine moves both
alike; absolute times are never compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lsr_scale.bench import micro

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baseline():
    base = micro.load_baseline("cpu", ROOT / "bench" / "baselines")
    assert base is not None, "bench/baselines/micro_cpu.json is missing"
    return base


def test_baseline_covers_every_case(baseline):
    assert set(micro.cases()) <= set(baseline)
    assert all(r["ratio"] > 0 for r in baseline.values())


def test_quick_ratios_within_tolerance_of_baseline(baseline):
    now = micro.measure(micro.QUICK, "cpu", repeat=7)
    rows = [{"case": n, "t_us": 1e6 * r["t"], "ref_us": 1e6 * r["t_ref"], "ratio": r["ratio"]}
            for n, r in now.items()]  # fmt: skip
    cmp = micro.compare(rows, baseline)
    bad = {r["case"]: f"{r['ratio']:.2f} vs {r['base_ratio']:.2f}" for r in cmp if r["regressed"]}
    assert not bad, f"ratio regressions beyond {micro.TOLERANCE}x: {bad}"


def test_compare_flags_a_regression():
    base = {"x": {"case": "x", "ratio": 1.0, "t_us": 10.0}}
    rows = [{"case": "x", "ratio": 1.0 * micro.TOLERANCE * 1.01, "t_us": 10.0}]
    assert micro.compare(rows, base)[0]["regressed"]
    assert not micro.compare([{**rows[0], "ratio": 1.2}], base)[0]["regressed"]
