"""The command-line interface: ``lsr-scale demo`` end to end on a small case, and --help."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from lsr_scale.cli import main


def test_demo_small_end_to_end(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(
            [
                "demo",
                "--n-train",
                "300",
                "--width",
                "16",
                "--depth",
                "2",
                "--epochs",
                "800",
                "--rank",
                "120",
                "--krylov-iters",
                "60",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
    assert code == 0
    # the demo uses the method objects, not refine's deprecated 0.1 keywords
    legacy = [w for w in caught if w.category is DeprecationWarning and "refine" in str(w.message)]
    assert not legacy, [str(w.message) for w in legacy]
    out = capsys.readouterr().out
    assert "one-shot LSR (subspace, k=120)" in out
    assert "Krylov LSR (LSMR, no preconditioner" in out
    assert "reduction" in out and "LSMR iters" in out
    results = json.loads((tmp_path / "demo.json").read_text())
    assert [r["method"].split(" ")[0] for r in results] == [
        "trained",
        "one-shot",
        "Krylov",
        "Krylov",
    ]
    trained, subspace = results[0]["rel_l2"], results[1]["rel_l2"]
    assert subspace < trained / 10, (trained, subspace)
    assert all(r["rel_l2"] < trained for r in results[1:])
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # the printed table shows the rows written to demo.json: each error and its reduction
    for r in results:
        assert f"| {r['method']}" in out
        assert f"{r['rel_l2']:.3e}" in out and f"{trained / r['rel_l2']:.1f}x" in out


def test_help_explains_flags():
    out = subprocess.run(
        [sys.executable, "-m", "lsr_scale.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--n-train", "--seed", "--device", "--out", "--no-progress", "--rank"):
        assert flag in out


def test_bad_device_is_a_clear_error():
    with pytest.raises(ValueError, match="device"):
        main(["demo", "--device", "cuda:7", "--no-plot", "--epochs", "1"])


def _fake_rows(workload, quick):
    rows = [
        {"method": "trained", "rel_l2": 1e-2, "paper": 1.1e-2},
        {"method": "subspace", "rel_l2": 1e-5, "paper": 2e-5},
        {"method": "krylov", "rel_l2": 2e-5},
    ]
    for r in rows:
        r.update(case=f"{workload}, quick case", wall_s=0.1, peak_mem_bytes=1, device="cpu")
    return rows


def test_reproduce_writes_its_figure(tmp_path, monkeypatch, capsys):
    """`lsr-scale reproduce` writes <out>/<workload>.png as the full runs do (the runner is
    replaced by fixed rows: tests/test_reproduce_quick.py runs the real quick cases)."""
    pytest.importorskip("matplotlib")
    from lsr_scale.cli import _reproduce

    def runner(quick, retrain, progress, log, curves=None):
        if curves is not None:
            curves.update(
                iterative=[(0.0, 1e-2), (1.0, 1e-3)],
                iterative_lsr=[(1.0, 1e-4)],
                lbfgs=[(0.0, 1e-2), (1.0, 5e-3)],
            )
        return _fake_rows("x", quick), {"paper_note": "paper: -"}

    for workload in ("function", "poisson"):
        monkeypatch.setitem(_reproduce._RUNNERS, workload, runner)
        out = tmp_path / "figs"
        assert main(["reproduce", workload, "--quick", "--out", str(out), "--threads", "1"]) == 0
        assert (out / f"{workload}.png").stat().st_size > 10_000
        assert f"figure: {out / f'{workload}.png'}" in capsys.readouterr().out
    assert (tmp_path / "figs" / "poisson_iterative.png").stat().st_size > 10_000
    # --no-plot writes none; the default folder is lsr_reproduce_out/ (ignored by git)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "function", "--quick", "--no-plot"]) == 0
    assert not (tmp_path / "lsr_reproduce_out").exists()
    assert main(["reproduce", "function", "--quick"]) == 0
    assert (tmp_path / "lsr_reproduce_out" / "function.png").is_file()
