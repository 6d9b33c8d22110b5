"""The quick reproductions (`lsr-scale reproduce <workload> --quick`) run and refine."""

from __future__ import annotations

import argparse
import json

import pytest

from lsr_scale.cli._reproduce import add_reproduce_parser, format_table, run_reproduce


def test_parser_registers_reproduce():
    ap = argparse.ArgumentParser()
    add_reproduce_parser(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["reproduce", "burgers", "--quick", "--json", "x.json"])
    assert args.workload == "burgers" and args.quick and args.json == "x.json"
    assert callable(args.func)
    with pytest.raises(SystemExit):
        ap.parse_args(["reproduce", "nope"])


@pytest.mark.parametrize("workload", ["function", "burgers", "antiderivative", "poisson"])
def test_quick_reproduction(workload, tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_SCALE_NO_PROGRESS", "1")
    path = tmp_path / "rows.json"
    # one thread: on a shared 2-core runner two threads oversubscribe badly
    rows = run_reproduce(workload, quick=True, json_path=path, progress=False, threads=1)
    saved = json.loads(path.read_text())
    assert [r["method"] for r in saved] == [r["method"] for r in rows]
    for r in saved:
        assert {"method", "rel_l2", "wall_s", "peak_mem_bytes"} <= r.keys()
        assert "quick" in r["case"]
    by = {r["method"]: r["rel_l2"] for r in rows}
    assert {"trained", "subspace", "krylov"} <= by.keys()
    assert by["subspace"] < by["trained"]
    if workload == "poisson":
        assert by["iterative"] < by["trained"]
    assert "| method" in format_table(rows)
