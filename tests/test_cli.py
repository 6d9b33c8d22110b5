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
