"""Progress of refine: a line per phase with counts that move, silence, the thread's lifetime."""

from __future__ import annotations

import io
import re
import threading
import time
import warnings

import pytest
import torch

import lsr_scale as ls
from lsr_scale import _progress
from lsr_scale._progress import PhaseProgress
from lsr_scale.models import MLP
from lsr_scale.refine import _krylov, _refine

THREAD = "lsr_scale-progress"


@pytest.fixture(scope="module")
def problem():
    """A small untrained float64 MLP (m = 105) on 120 rows, with validation rows."""
    torch.manual_seed(0)
    model = MLP((2, 8, 8, 1)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(160, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    return model, (x[:120], y[:120]), (x[120:], y[120:])


def _refine_quiet(model, data, method, **kw):
    """refine with a fixed seed, its warnings (maxiter reached...) ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = torch.Generator().manual_seed(0)
        return ls.refine(model, data=data, method=method, generator=g, **kw)


def _progress_threads():
    return [t for t in threading.enumerate() if t.name == THREAD]


class _Recorder(PhaseProgress):
    """Records each phase's final ``(text, count, total)``; writes to a string."""

    phases: list = []

    def __init__(self, desc, enabled=None):
        super().__init__(desc, True, stream=io.StringIO())

    def _end(self):
        if self._phase is not None:
            text, total, done, _, start, _ = self._phase
            count = None if done is None else done() - start
            _Recorder.phases.append((text, count, total))

    def stage(self, text, total=None, done=None, unit="products"):
        self._end()
        super().stage(text, total, done, unit)

    def close(self):
        self._end()
        super().close()


METHODS = {
    "subspace": (ls.Subspace(rank=20), False),
    "subspace-power": (ls.Subspace(rank=20, power_iters=1), False),
    "subspace-auto": (ls.Subspace(rank="auto", rank_candidates=(5, 10, 20)), True),
    "subspace-lsmr": (ls.Subspace(rank=20, reduced="lsmr"), False),
    "streamed": (ls.Subspace(rank=20, range_finder="streamed", oversample=0), False),
    "streamed-svd": (ls.Subspace(rank=20, reduced="streamed"), False),
    "krylov": (ls.Krylov(maxiter=50), False),
    "krylov-validation": (ls.Krylov(maxiter=50), True),
    "krylov-sketch": (ls.Krylov(preconditioner="sketch", maxiter=50), False),  # m = 67
    "krylov-jacobi": (ls.Krylov(preconditioner="jacobi", maxiter=50), False),
    "krylov-nystrom-method": (
        ls.Krylov(preconditioner=ls.precond.Nystrom(rank=20, method="nystrom"), maxiter=50),
        False,
    ),
    "sample": (ls.Krylov(space="sample", maxiter=50), False),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_phase_totals_match_the_work(problem, name, monkeypatch):
    """Every counted phase ends at its total (exact products) or below it (upper bounds)."""
    model, data, val = problem
    method, with_val = METHODS[name]
    if name == "krylov-sketch":  # a Jacobian of full column rank
        torch.manual_seed(0)
        model = MLP((2, 6, 6, 1)).double()
    monkeypatch.setattr(_refine, "PhaseProgress", _Recorder)
    _Recorder.phases = []
    _refine_quiet(model, data, method, validation=val if with_val else None)
    phases = _Recorder.phases
    assert phases[0][0] == "linearize" and phases[-1][0] == "check"
    counted = [p for p in phases if p[2] is not None]
    assert counted
    for text, count, total in counted:
        if text in ("LSMR", "sample-space CG"):  # upper bounds: the solvers stop early
            assert 0 < count <= total, (text, count, total)
        else:
            assert count == total, (text, count, total)


@pytest.mark.parametrize("name", ["subspace", "krylov", "subspace-auto"])
def test_lines_for_each_phase_without_a_terminal(problem, name, capsys):
    model, data, val = problem
    method, with_val = METHODS[name]
    _refine_quiet(model, data, method, validation=val if with_val else None, progress_bar=True)
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
    lines = err.splitlines()
    assert all(line.startswith(f"refine ({method.name}): ") for line in lines)
    texts = " | ".join(lines)
    expected = {
        "subspace": ["linearize, ", "randomized SVD 0/60 products", "reduced problem 0/20"],
        "krylov": ["build nystrom preconditioner 0/", "LSMR 0/50 iterations"],
        "subspace-auto": ["validation products 0/", "rank scan 0/3 ranks"],
    }[name] + ["check, "]
    for piece in expected:
        assert piece in texts, (piece, texts)


def test_a_slow_phase_prints_moving_counts_and_an_eta(problem, capsys, monkeypatch):
    model, data, _ = problem
    monkeypatch.setattr(_progress, "LINE_INTERVAL", 0.05)
    orig = _krylov._Monitor.__call__

    def slow(self, x):  # the monitor runs every check_every (10) iterations: 0.2 s each
        time.sleep(0.2)
        return orig(self, x)

    monkeypatch.setattr(_krylov._Monitor, "__call__", slow)
    method = ls.Krylov(preconditioner=None, maxiter=40, stall=None, atol=0.0, btol=0.0)
    _refine_quiet(model, data, method, progress_bar=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": LSMR " in ln]
    counts = [int(re.search(r"LSMR (\d+)/40 iterations", ln).group(1)) for ln in lines]
    assert len(counts) >= 3, lines
    assert counts == sorted(counts) and counts[-1] > counts[0], lines
    assert any(re.search(r", \d+ s, ETA \d+ s$", ln) for ln in lines), lines


def test_off_prints_nothing_and_starts_no_thread(problem, capfd, monkeypatch):
    model, data, _ = problem
    seen = []
    orig = _krylov._Monitor.__call__

    def spy(self, x):
        seen.append(len(_progress_threads()))
        return orig(self, x)

    monkeypatch.setattr(_krylov._Monitor, "__call__", spy)
    before = threading.active_count()
    _refine_quiet(model, data, ls.Krylov(maxiter=20), progress_bar=False)
    assert seen and max(seen) == 0
    assert threading.active_count() == before
    assert capfd.readouterr() == ("", "")


def test_default_is_silent_without_a_terminal(problem, capfd):
    model, data, _ = problem
    _refine_quiet(model, data, ls.Subspace(rank=10))
    assert capfd.readouterr() == ("", "")


def test_an_exception_stops_the_thread(problem, capsys, monkeypatch):
    model, data, _ = problem
    seen = []

    def boom(self, x):
        seen.append(len(_progress_threads()))
        raise RuntimeError("boom")

    monkeypatch.setattr(_krylov._Monitor, "__call__", boom)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"):
        _refine_quiet(model, data, ls.Krylov(maxiter=20), progress_bar=True)
    assert seen == [1]  # the thread ran during the solve
    assert not _progress_threads() and threading.active_count() == before
    assert ": LSMR 0/20 iterations" in capsys.readouterr().err


@pytest.mark.parametrize("method", [ls.Subspace(rank=20), ls.Krylov(maxiter=50)])
def test_results_do_not_depend_on_progress(problem, method, capsys, monkeypatch):
    model, data, _ = problem
    monkeypatch.setattr(_progress, "LINE_INTERVAL", 0.01)
    off = _refine_quiet(model, data, method, progress_bar=False)
    on = _refine_quiet(model, data, method, progress_bar=True)
    assert torch.equal(off.delta, on.delta)
    assert (off.info["num_jvp"], off.info["num_vjp"]) == (on.info["num_jvp"], on.info["num_vjp"])


def test_phase_progress_line_and_checks(monkeypatch):
    monkeypatch.setenv("LSR_SCALE_NO_PROGRESS", "1")
    stream = io.StringIO()
    n = [0]
    with PhaseProgress("job", True, stream=stream) as p:
        n[0] = 7
        p.stage("count", total=30, done=lambda: n[0], unit="steps")  # shows the increase
        n[0] = 17
        assert re.fullmatch(r"job: count 10/30 steps, \d+ s, ETA \d+ s", p.line())
        p.stage("open", done=lambda: n[0])
        assert re.fullmatch(r"job: open 0 products, \d+ s", p.line())
        p.stage("plain")
        assert re.fullmatch(r"job: plain, \d+ s", p.line())
    assert stream.getvalue().splitlines()[0].startswith("job: count 0/30 steps, 0 s")
    assert PhaseProgress("job", None, stream=io.StringIO()).enabled is False
    quiet = PhaseProgress("job", False)
    assert quiet._thread is None
    quiet.stage("x", total=3, done=lambda: 1)
    quiet.close()
    with pytest.raises(TypeError, match="done: expected a callable"):
        quiet.stage("x", done=3)
    with pytest.raises(TypeError, match="progress_bar: expected True, False or None"):
        PhaseProgress("job", 1)


def test_a_terminal_gets_a_redrawn_line(monkeypatch):
    pytest.importorskip("tqdm")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(_progress, "REFRESH", 0.01)
    monkeypatch.delenv("LSR_SCALE_NO_PROGRESS", raising=False)
    stream = Tty()
    n = [0]
    with PhaseProgress("job", None, stream=stream) as p:
        p.stage("count", total=10, done=lambda: n[0], unit="steps")
        for i in range(1, 6):
            n[0] = i
            time.sleep(0.03)
    text = stream.getvalue()
    assert "\r" in text and "job: count 0/10 steps" in text and "/10 steps" in text
    assert re.search(r"job: count [1-5]/10 steps", text)
    assert not _progress_threads()
