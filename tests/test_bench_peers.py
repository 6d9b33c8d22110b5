"""Smoke test of the ``peers`` benchmark suite: the demo problem at tiny sizes through --quick.

The curvlinops row is skipped when curvlinops-for-pytorch (the [peers] extra) is absent, so
CI does not depend on it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from lsr_scale import bench


def test_bench_peers_quick(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("LSR_PEERS_CACHE", str(tmp_path / "cache"))
    from lsr_scale.bench import peers

    tools = [k for k, _ in peers.TOOLS]
    if importlib.util.find_spec("curvlinops") is None:
        tools.remove("curvlinops_lsmr")
    out = tmp_path / "peers"
    argv = ["peers", "--quick", "--device", "cpu", "--problems", "demo", "--out", str(out)]
    assert bench.main([*argv, "--tools", *tools]) == 0
    doc = json.loads((out / "peers_cpu_quick.json").read_text())
    assert doc["quick"] and doc["device"].startswith("cpu")
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
    assert "| tool |" in (out / "peers_cpu_quick.md").read_text()
    assert (out / "peers_demo.png").exists()
