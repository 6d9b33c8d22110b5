"""Checkpoints, resumed solves and interrupts of LSMR and LSQR (issue 11, part 5)."""

from __future__ import annotations

import io
import math

import pytest
import torch

import lsr_scale as ls
from lsr_scale.operators import DiagonalOperator, LinearOperator, MatrixOperator
from lsr_scale.solvers import SolverInterrupted, SolverState

F64 = torch.float64
SOLVE = {"lsmr": ls.lsmr, "lsqr": ls.lsqr}
# No stopping test fires: the solve runs to maxiter.
NOSTOP = dict(atol=0.0, btol=0.0, conlim=math.inf)


def make_problem(generator, m=150, n=80):
    s = torch.logspace(0, -4, n, dtype=F64)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    A = U @ torch.diag(s) @ V.T
    return A, torch.randn(m, generator=generator, dtype=F64)


def options(case, generator, n=80):
    if case == "plain":
        return {}
    if case == "damp_x0":
        return dict(damp=1e-3, x0=torch.randn(n, generator=generator, dtype=F64))
    if case == "precond_damp":
        d = torch.rand(n, generator=generator, dtype=F64) + 0.5
        return dict(damp=1e-3, M=DiagonalOperator(d))
    if case == "check_every":
        return dict(check_every=7)
    raise AssertionError(case)


def roundtrip(state: SolverState) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint file would go."""
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same(a, b):
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.history["normr"], b.history["normr"])
    assert torch.equal(a.history["normar"], b.history["normar"])
    assert (a.itn, a.istop) == (b.itn, b.istop)
    assert (a.normr, a.normar, a.norma, a.conda, a.normx) == (
        b.normr,
        b.normar,
        b.norma,
        b.conda,
        b.normx,
    )
    assert (a.num_matvecs, a.num_rmatvecs) == (b.num_matvecs, b.num_rmatvecs)


@pytest.mark.parametrize("case", ["plain", "damp_x0", "precond_damp", "check_every"])
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_resume_is_bitwise(name, case, generator):
    A, b = make_problem(generator)
    kw = {**NOSTOP, **options(case, generator)}
    straight = SOLVE[name](A, b, maxiter=40, **kw)
    assert straight.itn == 40 and straight.istop == 7

    states = []
    again = SOLVE[name](A, b, maxiter=40, checkpoint=states.append, checkpoint_every=15, **kw)
    assert_same(again, straight)  # checkpoints change nothing
    assert [s.itn for s in states] == [15, 30, 40]
    saved = roundtrip(states[0])
    resumed = SOLVE[name](A, b, maxiter=40, resume=saved, **kw)
    assert_same(resumed, straight)
    # The state is not modified: it resumes again to the same result, as a SolverState too.
    assert_same(SOLVE[name](A, b, maxiter=40, resume=saved, **kw), straight)
    assert_same(SOLVE[name](A, b, maxiter=40, resume=states[1], **kw), straight)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_run_15_then_continue_to_40(name, generator):
    A, b = make_problem(generator)
    straight = SOLVE[name](A, b, maxiter=40, **NOSTOP)
    states = []
    short = SOLVE[name](A, b, maxiter=15, checkpoint=states.append, checkpoint_every=100, **NOSTOP)
    assert short.itn == 15 and short.istop == 7
    assert [s.itn for s in states] == [15]  # the final state, for going on
    resumed = SOLVE[name](A, b, maxiter=40, resume=roundtrip(states[0]), **NOSTOP)
    assert_same(resumed, straight)
    # With the same maxiter there is nothing left to do: the saved result comes back.
    assert_same(SOLVE[name](A, b, maxiter=15, resume=states[0], **NOSTOP), short)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_resume_after_convergence(name, generator):
    # check_every=10 runs past the converging iteration with frozen values; every state
    # along the way resumes to the same result.
    A, b = make_problem(generator, m=80, n=10)
    kw = dict(atol=1e-8, btol=1e-8, check_every=10, maxiter=100)
    straight = SOLVE[name](A, b, **kw)
    assert straight.converged and 3 < straight.itn < 30
    states = []
    SOLVE[name](A, b, checkpoint=states.append, checkpoint_every=3, **kw)
    assert states[-1].itn % 10 == 0 and states[-1].itn >= straight.itn
    for state in states:
        resumed = SOLVE[name](A, b, resume=state, **kw)
        if state.itn < straight.itn:
            assert_same(resumed, straight)
        else:  # saved after the test fired: the result comes back without more iterations
            assert torch.equal(resumed.x, straight.x) and resumed.itn == straight.itn
            assert resumed.istop == straight.istop and resumed.normr == straight.normr
            assert torch.equal(resumed.history["normr"], straight.history["normr"])
            assert resumed.num_matvecs == state.counts["num_matvecs"]


def test_checkpoint_schedule(generator):
    A, b = make_problem(generator)
    states = []
    ls.lsmr(A, b, maxiter=17, checkpoint=states.append, checkpoint_every=5, **NOSTOP)
    assert [s.itn for s in states] == [5, 10, 15, 17]
    s = states[1]
    assert s.solver == "lsmr" and set(s.vectors) == {"u", "v", "y", "h", "hbar"}
    assert s.history["normr"].shape == (10,) and s.counts == {"num_matvecs": 10, "num_rmatvecs": 11}
    assert s.settings["maxiter"] == 17 and s.settings["shape"] == [150, 80]
    assert all(t.ndim == 0 for t in s.scalars.values())
    states.clear()
    ls.lsqr(A, b, maxiter=15, checkpoint=states.append, checkpoint_every=5, **NOSTOP)
    assert [s.itn for s in states] == [5, 10, 15]  # the last one is not saved twice
    assert set(states[0].vectors) == {"u", "v", "y", "w"}
    states.clear()
    ls.lsmr(A, b, maxiter=0, checkpoint=states.append, checkpoint_every=5)
    assert states == []


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_no_per_iteration_host_sync_with_checkpoints(name, generator, monkeypatch):
    # Checkpoints copy on the device: the host reads stay those of the convergence flag.
    A, b = make_problem(generator)
    counts = {}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] = counts.get(key, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    for attr in ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, counting(attr, getattr(torch.Tensor, attr)))
    monkeypatch.setattr(torch, "tensor", counting("torch.tensor", torch.tensor))

    def run(maxiter):
        counts.clear()
        kw = dict(maxiter=maxiter, check_every=5, checkpoint=lambda s: None, checkpoint_every=5)
        res = SOLVE[name](A, b, damp=0.1, **NOSTOP, **kw)
        assert res.itn == maxiter
        return dict(counts)

    short, long = run(5), run(25)
    assert long.pop("__bool__") - short.pop("__bool__") == 4
    assert long == short


class Raising(LinearOperator):
    """``A`` whose ``k``-th matvec (or rmatvec) raises KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, A, k, where="matvec"):
        super().__init__(A.shape, A.dtype, A.device)
        self.A, self.k, self.where, self.calls = A, k, where, 0

    def _tick(self, where):
        if where == self.where:
            self.calls += 1
            if self.calls == self.k:
                raise KeyboardInterrupt

    def _matvec(self, x):
        self._tick("matvec")
        return self.A @ x

    def _rmatvec(self, y):
        self._tick("rmatvec")
        return self.A.T @ y


@pytest.mark.parametrize("case", ["plain", "precond_damp"])
@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_interrupt_from_callback(name, case, generator):
    A, b = make_problem(generator)
    kw = {**NOSTOP, **options(case, generator)}
    k = 12

    def callback(x):
        callback.n += 1
        if callback.n == k:
            raise KeyboardInterrupt

    callback.n = 0
    with pytest.raises(SolverInterrupted) as info:
        SOLVE[name](A, b, maxiter=40, callback=callback, **kw)
    err = info.value
    assert isinstance(err, KeyboardInterrupt)
    res = err.result
    assert isinstance(res, ls.SolverResult) and res.interrupted and not res.converged
    assert res.itn == k and res.istop == 7 and res.history["normr"].shape == (k,)
    upto_k = SOLVE[name](A, b, maxiter=k, **kw)
    assert torch.equal(res.x, upto_k.x)
    assert torch.equal(res.history["normr"], upto_k.history["normr"])
    # The interrupt came between iterations: its state resumes exactly.
    assert err.state is not None and err.state.itn == k
    straight = SOLVE[name](A, b, maxiter=40, **kw)
    assert_same(SOLVE[name](A, b, maxiter=40, resume=roundtrip(err.state), **kw), straight)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_interrupt_in_a_product(name, generator):
    # Ctrl-C inside the 9th matvec (iteration 9): x is the iterate after 8 iterations, and
    # there is no consistent state to resume from (u was half updated).
    A, b = make_problem(generator)
    with pytest.raises(SolverInterrupted) as info:
        SOLVE[name](Raising(A, 9), b, maxiter=40, **NOSTOP)
    res = info.value.result
    assert res.itn == 8 and res.interrupted and info.value.state is None
    assert torch.equal(res.x, SOLVE[name](A, b, maxiter=8, **NOSTOP).x)
    # Before the first iteration there is nothing to keep: a plain KeyboardInterrupt.
    with pytest.raises(KeyboardInterrupt) as info:
        SOLVE[name](Raising(A, 1, "rmatvec"), b, maxiter=40)
    assert not isinstance(info.value, SolverInterrupted)


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_interrupt_after_convergence_keeps_istop(name, generator):
    A, b = make_problem(generator, m=80, n=10)
    kw = dict(atol=1e-8, btol=1e-8, check_every=1000, maxiter=100)
    done = SOLVE[name](A, b, **kw)
    assert done.converged

    def callback(x):
        callback.n += 1
        if callback.n == done.itn + 3:  # the flag is set but not yet read by the host
            raise KeyboardInterrupt

    callback.n = 0
    with pytest.raises(SolverInterrupted) as info:
        SOLVE[name](A, b, callback=callback, **kw)
    res = info.value.result
    assert res.istop == done.istop and res.itn == done.itn and torch.equal(res.x, done.x)
    assert res.interrupted and res.converged


def test_interrupt_from_checkpoint(generator):
    A, b = make_problem(generator)

    def checkpoint(state):
        raise KeyboardInterrupt

    with pytest.raises(SolverInterrupted) as info:
        ls.lsmr(A, b, maxiter=40, checkpoint=checkpoint, checkpoint_every=10, **NOSTOP)
    assert info.value.result.itn == 10 and info.value.state.itn == 10


@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_resume_refuses_another_solve(name, generator):
    A, b = make_problem(generator)
    states = []
    SOLVE[name](A, b, maxiter=10, damp=0.1, checkpoint=states.append, checkpoint_every=5)
    state = states[0]
    solve = SOLVE[name]
    other = {"lsmr": ls.lsqr, "lsqr": ls.lsmr}[name]
    with pytest.raises(ValueError, match=rf"solver: expected '{name}' \(as in the resumed state\)"):
        other(A, b, maxiter=10, damp=0.1, resume=state)
    with pytest.raises(
        ValueError, match=r"damp: expected 0.1 \(as in the resumed state\), got 0.2"
    ):
        solve(A, b, maxiter=10, damp=0.2, resume=state)
    with pytest.raises(ValueError, match=r"atol: expected 1e-06"):
        solve(A, b, maxiter=10, damp=0.1, atol=1e-8, resume=state)
    with pytest.raises(ValueError, match=r"x0: expected False"):
        solve(A, b, maxiter=10, damp=0.1, x0=torch.zeros(80, dtype=F64), resume=state)
    with pytest.raises(ValueError, match=r"shape: expected \[150, 80\]"):
        solve(A[:50], b[:50], maxiter=10, damp=0.1, resume=state)
    with pytest.raises(ValueError, match=r"b: expected the right-hand side of the resumed solve"):
        solve(A, 2 * b, maxiter=10, damp=0.1, resume=state)
    with pytest.raises(ValueError, match=r"maxiter: expected at least 5 .*, got 3"):
        solve(A, b, maxiter=3, damp=0.1, resume=state)
    with pytest.raises(
        TypeError, match=r"dtype: expected 'float64' \(as in the resumed state\), got 'float32'"
    ):
        solve(A.float(), b.float(), maxiter=10, damp=0.1, resume=state)
    with pytest.raises(TypeError, match="resume: expected a SolverState or a dict, got"):
        solve(A, b, maxiter=10, damp=0.1, resume=[1, 2])
    with pytest.raises(ValueError, match="resume: expected a solver state of format 1"):
        solve(A, b, maxiter=10, damp=0.1, resume={"format": 99})
    broken = state.to_dict()
    broken["vectors"] = {k: t for k, t in broken["vectors"].items() if k != "v"}
    with pytest.raises(ValueError, match=r"resume: expected vectors \[.*\] in the state, got"):
        solve(A, b, maxiter=10, damp=0.1, resume=broken)
    with pytest.raises(ValueError, match="checkpoint_every: expected a positive integer"):
        solve(A, b, checkpoint=states.append)
    with pytest.raises(ValueError, match="checkpoint_every: expected None without checkpoint="):
        solve(A, b, checkpoint_every=5)
    with pytest.raises(TypeError, match="checkpoint: expected a callable"):
        solve(A, b, checkpoint=5, checkpoint_every=5)


def test_resume_on_another_operator_type(generator):
    # The state holds tensors only: any operator with the same products continues it.
    A, b = make_problem(generator)
    straight = ls.lsmr(A, b, maxiter=30, **NOSTOP)
    states = []
    ls.lsmr(A, b, maxiter=30, checkpoint=states.append, checkpoint_every=10, **NOSTOP)
    resumed = ls.lsmr(MatrixOperator(A), b, maxiter=30, resume=states[0], **NOSTOP)
    assert torch.equal(resumed.x, straight.x) and resumed.itn == 30
