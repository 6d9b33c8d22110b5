"""Smoke test of bench/bench_peers.py: the demo problem at tiny sizes through --quick.

The curvlinops row is skipped when curvlinops-for-pytorch (the [peers] extra) is absent, so
CI does not depend on it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(monkeypatch, cache):
    monkeypatch.setenv("LSR_PEERS_CACHE", str(cache))  # read when the module is imported
    spec = importlib.util.spec_from_file_location(
        "bench_peers_under_test", ROOT / "bench" / "bench_peers.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_peers_quick(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    mod = _load(monkeypatch, tmp_path / "cache")
    tools = [k for k, _ in mod.TOOLS]
    if importlib.util.find_spec("curvlinops") is None:
        tools.remove("curvlinops_lsmr")
    out = tmp_path / "peers"
    mod.main(["--quick", "--problems", "demo", "--out", str(out), "--tools", *tools])
    doc = json.loads(out.with_suffix(".json").read_text())
    rows = {r["key"]: r for r in doc["rows"]}
    assert set(rows) == set(tools)
    for r in rows.values():
        assert {"tool", "problem", "rel_l2", "wall_s", "peak_mem_bytes", "products"} <= set(r)
        assert r["problem"] == "demo" and r["device"] == "cpu"
    base = rows["trained"]["rel_l2"]
    # the exact dense reference and one-shot LSR improve on the trained network
    for key in ("subspace_best", "dense_lstsq"):
        assert rows[key]["rel_l2"] < base
        assert rows[key]["wall_s"] > 0 and rows[key]["peak_mem_bytes"] > 0
        assert rows[key]["products"] > 0
    assert rows["adam"]["curve"] and rows["lbfgs"]["curve"]
    assert "absent" in rows["cupyx_lsmr"] or rows["cupyx_lsmr"]["rel_l2"] is not None
    assert "| tool |" in out.with_suffix(".md").read_text()
    assert (tmp_path / "peers_demo.png").exists()
