"""Workloads: the Burgers solver, the random fields, data seeding, residuals and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsr_scale import pde
from lsr_scale.problems._antiderivative import AntiderivativeProblem
from lsr_scale.problems._burgers import BurgersProblem, DeepONetGrid, solve_burgers
from lsr_scale.problems._checkpoint import load_checkpoint, save_checkpoint
from lsr_scale.problems._grf import eval_fourier, periodic_grf, rbf_grf, sine_grf
from lsr_scale.problems._poisson import PoissonProblem, exact_solution, source_term


def test_burgers_solver_is_exact_on_the_heat_equation():
    x = np.arange(64) / 64
    u0 = np.sin(2 * np.pi * x) + 0.3 * np.cos(6 * np.pi * x)
    u = solve_burgers(u0, nu=0.1, t_final=1.0, dt=0.25, nonlinear=False)
    ref = np.exp(-0.1 * 4 * np.pi**2) * np.sin(2 * np.pi * x) + 0.3 * np.exp(
        -0.1 * 36 * np.pi**2
    ) * np.cos(6 * np.pi * x)
    np.testing.assert_allclose(u, ref, atol=1e-14)


def _cole_hopf(x, t, nu=0.1, a=0.5):
    """Exact periodic Burgers solution u = -2 nu (log phi)_x, phi a heat-equation solution."""
    e = a * np.exp(-nu * 4 * np.pi**2 * t)
    return 2 * nu * e * 2 * np.pi * np.sin(2 * np.pi * x) / (1 + e * np.cos(2 * np.pi * x))


def test_burgers_solver_matches_cole_hopf_with_fourth_order_convergence():
    x = np.arange(128) / 128
    errs = [
        np.abs(solve_burgers(_cole_hopf(x, 0.0), dt=dt) - _cole_hopf(x, 1.0)).max()
        for dt in (1e-2, 5e-3)
    ]
    assert errs[1] < 1e-9
    assert errs[0] / errs[1] > 10  # fourth order: about 16


def test_burgers_grf_data_converge_under_refinement():
    rng = np.random.default_rng(3)
    u0 = periodic_grf(3, 512, rng=rng)
    fine = solve_burgers(u0, dt=2.5e-4)[:, ::4]
    coarse = solve_burgers(u0[:, ::2], dt=5e-4)[:, ::2]
    assert np.abs(fine - coarse).max() / np.abs(fine).max() < 1e-6


def test_periodic_grf_has_the_prescribed_spectrum():
    u = periodic_grf(4000, 64, rng=np.random.default_rng(0))
    mean0 = u.mean(axis=1)  # the constant mode: variance 625 / 25^2 = 1
    assert abs(mean0.var() - 1.0) < 0.1
    c1 = math.sqrt(2) * (u * np.cos(2 * np.pi * np.arange(64) / 64)).mean(axis=1)
    assert abs(c1.var() / (625 / (4 * np.pi**2 + 25) ** 2) - 1) < 0.1


def test_burgers_solver_on_a_length_two_interval_is_exact_on_the_heat_equation():
    # The viscid data set's domain: [-1, 1), sin(k pi x) decays as exp(-nu (k pi)^2 t).
    x = -1 + 2 * np.arange(64) / 64
    u0 = np.sin(np.pi * x) - 0.5 * np.sin(3 * np.pi * x)
    u = solve_burgers(u0, nu=0.05, t_final=1.0, dt=0.25, nonlinear=False, length=2.0)
    ref = np.exp(-0.05 * np.pi**2) * np.sin(np.pi * x) - 0.5 * np.exp(
        -0.05 * 9 * np.pi**2
    ) * np.sin(3 * np.pi * x)
    np.testing.assert_allclose(u, ref, atol=1e-14)


def test_eval_fourier_interpolates_trigonometric_polynomials_exactly():
    x = -1 + 2 * np.arange(16) / 16
    f = lambda t: 0.3 + np.cos(np.pi * t) - 2 * np.sin(5 * np.pi * t) + 0.7 * np.cos(8 * np.pi * t)  # noqa: E731
    pts = np.linspace(-1, 1, 37)
    got = eval_fourier(f(x)[None], pts, length=2.0, x0=-1.0)[0]
    # the Nyquist mode cos(8 pi t) is interpolated by its real part, which it equals
    np.testing.assert_allclose(got, f(pts), atol=1e-13)


def test_sine_grf_has_the_prescribed_variances():
    c = sine_grf(20000, 4, rng=np.random.default_rng(0))
    ref = 70.14**2 * (49 + (np.arange(1, 5) * np.pi) ** 2) ** -2.5
    np.testing.assert_allclose(c.var(axis=0) / ref, 1.0, atol=0.05)


def test_viscid_burgers_data_are_dirichlet_and_odd_symmetric_and_converged():
    a = BurgersProblem(n_train=4, n_test=1, dataset="viscid", width=8, depth=2)
    assert a.nu == pytest.approx(0.1 / math.pi)
    y = a.y[:, 0].double().numpy()
    assert y[0] == -1.0 and y[-1] == 1.0 and a.u_train.shape == (4, 128)
    s = a.s_train.double().numpy()
    assert np.abs(s[:, [0, -1]]).max() < 1e-6  # zero boundary values, to float32
    assert np.abs(s).max() > 0.05  # and not trivial
    np.testing.assert_allclose(s[:, ::-1], -s, atol=1e-6)  # odd initial data stay odd
    # the solve on a finer grid and step agrees (the same draws: the modes are fixed)
    b = BurgersProblem(n_train=4, n_test=1, dataset="viscid", solver_grid=1024, dt=2.5e-4,
                       dtype=torch.float64)  # fmt: skip
    np.testing.assert_allclose(s, b.s_train.numpy(), atol=1e-6)


def test_burgers_problem_refuses_unknown_datasets_and_coarse_solver_grids():
    with pytest.raises(ValueError, match="dataset: expected 'periodic' or 'viscid', got 'x'"):
        BurgersProblem(n_train=1, n_test=1, dataset="x")
    with pytest.raises(ValueError, match="solver_grid: expected at least 512"):
        BurgersProblem(n_train=1, n_test=1, dataset="viscid", solver_grid=256)


def test_rbf_grf_covariance():
    x = np.array([0.0, 0.1, 0.5])
    s = rbf_grf(20000, x, length_scale=0.2, rng=np.random.default_rng(0))
    cov = np.cov(s.T)
    ref = np.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 0.04)
    np.testing.assert_allclose(cov, ref, atol=0.05)


def test_burgers_problem_is_seeded_and_grid_view_shares_parameters():
    a = BurgersProblem(n_train=6, n_test=2, width=8, depth=2)
    b = BurgersProblem(n_train=6, n_test=2, width=8, depth=2)
    torch.testing.assert_close(a.u_train, b.u_train)
    assert a.u_train.shape == (6, 128) and a.s_test.shape == (2, 128)
    net = a.make_model()
    view = DeepONetGrid(net)
    (u, y), s = a.train_data
    assert view(u, y).shape == s.shape
    assert {n[len("net.") :] for n, _ in view.named_parameters()} == dict(
        net.named_parameters()
    ).keys()
    fixed = DeepONetGrid(net, y=y)  # fixed trunk grid: one input, one row per function
    torch.testing.assert_close(fixed(u), view(u, y))
    assert dict(fixed.named_parameters()).keys() == dict(view.named_parameters()).keys()
    err0 = a.test_error(lambda inp: net.grid(*inp))
    a.train(net, epochs=30, lr=3e-3, progress=False)
    assert a.test_error(lambda inp: net.grid(*inp)) < err0


def test_antiderivative_exact_solution_and_residual():
    prob = AntiderivativeProblem(n_train=4, n_test=3, n_residual=50, width=8, depth=2)
    # the exact antiderivative of the piecewise-linear s: derivative by finite differences
    h = float(prob.x_fine[1] - prob.x_fine[0])
    du = (prob.u_fine[:, 1:] - prob.u_fine[:, :-1]) / h
    mid = 0.5 * (prob.s_fine[:, 1:] + prob.s_fine[:, :-1])
    torch.testing.assert_close(du, mid, atol=1e-3, rtol=1e-3)
    net = prob.make_model()
    fn, u_row, y = prob.instance_residual(net, 1)
    r = fn(dict(net.named_parameters()))
    assert r.shape == (51,) and y.shape == (50, 1) and u_row.shape == (1, 100)
    errs = prob.instance_errors(lambda inp: net.grid(*inp))
    assert errs.shape == (3,) and torch.isfinite(errs).all()


def test_poisson_source_matches_autograd_and_residual_vanishes_on_exact():
    x = torch.rand(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lap = pde.laplacian(lambda z: exact_solution(z[None])[0], x)
    torch.testing.assert_close(-lap, source_term(x))
    prob = PoissonProblem(n_interior=50, n_boundary=20, widths=(2, 8, 8, 1), grid=5)
    net = prob.make_model()
    b = prob.blocks(net)
    p = dict(net.named_parameters())
    assert b["pde"](p).shape == (50,) and b["bc"](p).shape == (20,)
    assert prob.residual_fn(net)(p).shape == (70,)
    assert float(exact_solution(prob.x_bc.double()).abs().max()) < 1e-5


def test_checkpoint_roundtrip(tmp_path):
    prob = BurgersProblem(n_train=2, n_test=1, width=8, depth=2)
    net = prob.make_model()
    save_checkpoint(net, tmp_path / "m.pt", {"epochs": 3})
    other = BurgersProblem(n_train=2, n_test=1, width=8, depth=2, seed=5).make_model()
    meta = load_checkpoint(other, tmp_path / "m.pt")
    assert meta == {"epochs": 3}
    for a, b in zip(net.parameters(), other.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="train_checkpoints"):
        load_checkpoint(other, tmp_path / "none.pt")
