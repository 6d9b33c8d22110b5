"""``lsr-scale bench gpu --dry-run`` walks every GPU step on the CPU with tiny sizes."""

from __future__ import annotations

import json

from lsr_scale.bench import main as bench_main
from lsr_scale.bench.gpu import STEPS


def test_gpu_dry_run_walks_every_step(tmp_path, capsys):
    assert bench_main(["gpu", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = (tmp_path / "gpu_summary_cpu_dry.md").read_text()
    assert out.rstrip().endswith(summary.rstrip())  # the summary is printed last
    doc = json.loads((tmp_path / "gpu_kernels_cpu_quick.json").read_text())
    assert list(doc["steps"]) == list(STEPS)
    assert all(s["status"] in ("ok", "skipped") for s in doc["steps"].values()), doc["steps"]
    assert doc["correctness"]["all_ok"]
    sections = {r["section"] for r in doc["rows"]}
    assert sections == {"bandwidth", "lsmr", "nystrom"}
    assert json.loads((tmp_path / "scale_cpu_quick.json").read_text())["rows"]


def test_gpu_without_a_gpu_says_so(tmp_path, capsys):
    assert bench_main(["gpu", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
