"""The ``pde`` and ``distributed`` suites and the harness pieces the bench/ scripts use: a
tiny pde run, a distributed replot of the recorded results, rows of the older keyed format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lsr_scale import bench
from lsr_scale.bench._harness import Record, parse_script

ROOT = Path(__file__).resolve().parents[1]


def test_pde_suite_tiny(tmp_path):
    argv = ["pde", "--quick", "--device", "cpu", "--out", str(tmp_path), "--repeats", "1"]
    argv += ["--cases", "MLP [2, 32x3, 1]", "--routes", "plain", "forward"]
    assert bench.main(argv) == 0
    doc = json.loads((tmp_path / "pde_cpu_quick.json").read_text())
    (row,) = doc["rows"]
    assert row["case"] == "MLP [2, 32x3, 1]" and row["plain"]["jvp_x"] > 0
    assert row["forward"]["jvp_kind"] == "linearize"
    assert "| MLP [2, 32x3, 1] | 500 |" in (tmp_path / "pde_cpu_quick.md").read_text()


def test_distributed_replot_reads_the_recorded_format(tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copy(ROOT / "bench" / "results" / "distributed_cpu.json", tmp_path)
    argv = ["distributed", "--replot", "--device", "cpu", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    text = (tmp_path / "distributed_cpu.md").read_text()
    assert "| 4 | 4,000 |" in text and "load average 8.6 at start" in text
    assert (tmp_path / "distributed_cpu.png").exists()


def test_record_reads_keyed_rows_and_scripts_parse(tmp_path):
    old = {"device": "cpu (x86_64, 1 thread)", "rows": {"a/0": {"x": 1}, "a/1": {"x": 2}}}
    (tmp_path / "s_cpu.json").write_text(json.dumps(old))
    rec = Record("s", out=tmp_path, device="cpu")
    assert rec.rows == [{"key": "a/0", "x": 1}, {"key": "a/1", "x": 2}] and rec.has(key="a/1")
    text = rec.markdown("T", None, command="c", more=["intro", "| a |\n|---|\n"])
    assert "intro" in text and "| a |" in text
    args = parse_script(str(ROOT / "bench" / "x.py"), "doc", argv=["--quick"])
    assert args.quick and args.out == ROOT / "bench" / "results"
    assert args.command == "python bench/x.py --quick"
