"""The benchmark harness (lsr_scale.bench._harness) and the ``lsr-scale bench`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lsr_scale.bench import SUITES, SuiteUnavailable, load
from lsr_scale.bench import main as bench_main
from lsr_scale.bench._harness import (
    Record,
    device_name,
    device_tag,
    load_info,
    md_table,
    step_time,
    time_ratio,
    timeit,
)


def test_device_tags_and_names():
    assert device_tag("cpu") == "cpu"
    assert device_name("cpu", threads=1).startswith("cpu (") and "1 thread)" in device_name(
        "cpu", threads=1
    )
    info = load_info()
    assert set(info) == {"loadavg", "cpus", "threads"}


def test_timing_is_ratio_of_interleaved_medians():
    a = torch.randn(200, 200)
    t = timeit(lambda: a @ a, repeat=3)
    assert t > 0
    r = time_ratio(lambda: (a @ a, a @ a), lambda: a @ a, repeat=5)
    assert set(r) == {"t", "t_ref", "ratio"} and r["ratio"] > 0
    assert step_time(lambda k: [a @ a for _ in range(k)], 1, 3, repeat=1) >= 0


def test_record_resumes_and_replaces_by_key(tmp_path):
    rec = Record("demo", out=tmp_path, device="cpu", quick=True)
    assert rec.path_json == tmp_path / "demo_cpu_quick.json"
    rec.add({"m": 1, "v": 1.0}, key=("m",))
    rec.add({"m": 2, "v": 2.0}, key=("m",))
    rec.add({"m": 1, "v": 3.0}, key=("m",))
    rec.set(note="x")
    doc = json.loads(rec.path_json.read_text())
    assert doc["device_tag"] == "cpu" and doc["note"] == "x" and doc["quick"] is True
    again = Record("demo", out=tmp_path, device="cpu", quick=True)
    assert again.has(m=1, v=3.0) and again.has(m=2) and not again.has(m=1, v=1.0)
    assert len(again.rows) == 2 and again.meta["note"] == "x"
    full = Record("demo", out=tmp_path, device="cpu")  # a full run never reads quick rows
    assert full.rows == [] and full.path_json.name == "demo_cpu.json"
    text = again.markdown("Demo", ["m", ("v:.2f", "value")], command="cmd", notes=["n."])
    assert "| m | value |" in text and "| 1 | 3.00 |" in text and text.endswith("n.\n")
    assert again.path_md.read_text() == text


def test_md_table_formats():
    t = md_table([("a", "A"), (lambda r: r["a"] * 2, "2A"), "b:.1e"], [{"a": 1000, "b": 0.5}])
    assert t.splitlines() == ["| A | 2A | b |", "|---|---|---|", "| 1,000 | 2,000 | 5.0e-01 |"]


def test_cli_lists_every_suite_without_importing_them(capsys):
    assert bench_main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("products", "lsmr", "precond", "precision", "scale", "pde", "peers",
                 "distributed", "gpu", "micro"):  # fmt: skip
        assert name in SUITES and out.count(f"\n{name} ") + out.startswith(name) >= 1
    code = "import lsr_scale.bench, sys; print('matplotlib' in sys.modules, 'scipy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split()[0] == "False"


def test_unknown_or_missing_suite_is_reported(capsys, monkeypatch):
    assert bench_main(["nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    monkeypatch.setitem(SUITES, "ghost", ("no_such_module", "missing"))
    with pytest.raises(SuiteUnavailable, match="not installed"):
        load("ghost")


def test_products_quick_writes_device_tagged_results(tmp_path):
    rc = bench_main(["products", "--quick", "--out", str(tmp_path), "--models", "mlp",
                     "--rows", "64"])  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / "products_cpu_quick.json").read_text())
    (row,) = doc["rows"]
    assert row["model"] == "mlp" and row["jvp_over_forward"] > 0 and row["params"] > 0
    assert "| JVP / forward |" in (tmp_path / "products_cpu_quick.md").read_text()


def test_write_files_writes_json_and_markdown(tmp_path):
    import json

    from lsr_scale.bench._harness import write_files

    text = write_files("one", {"device": "cpu (test)", "x": 1.5}, "A title", "cmd --flag",
                       ["| a |", "|---|", "| 1 |"], out=tmp_path)  # fmt: skip
    data = json.loads((tmp_path / "one.json").read_text())
    assert data["x"] == 1.5 and data["device"] == "cpu (test)" and "torch" in data
    md = (tmp_path / "one.md").read_text()
    assert md == text and md.startswith("# A title (cpu (test), torch ")
    assert "Command: `cmd --flag`" in md and md.endswith("| 1 |\n")
