"""Seeded Gaussian random fields for the operator-learning workloads."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["periodic_grf", "sine_grf", "rbf_grf", "interp_periodic", "eval_fourier"]


def periodic_grf(
    n_samples: int,
    n_grid: int,
    *,
    alpha: float = 2.0,
    tau: float = 5.0,
    sigma: float = 25.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Samples of ``N(0, sigma^2 (-Laplace + tau^2 I)^-alpha)`` on the periodic unit interval.

    With the defaults this is ``N(0, 625 (-Laplace + 25 I)^-2)``, the Burgers initial
    conditions of the FNO/DeepONet benchmarks. The field is expanded in the real Fourier basis
    ``1, sqrt(2) cos(2 pi k x), sqrt(2) sin(2 pi k x)`` (eigenfunctions of ``-Laplace`` with
    eigenvalues ``(2 pi k)^2``), truncated at the grid's Nyquist mode, and evaluated at
    ``x_j = j / n_grid``. Returns ``(n_samples, n_grid)`` float64.
    """
    kmax = n_grid // 2 - 1
    k = np.arange(1, kmax + 1)
    sqrt_eig = sigma * ((2 * math.pi * k) ** 2 + tau**2) ** (-alpha / 2)
    sqrt_eig0 = sigma * tau ** (-alpha)
    x = np.arange(n_grid) / n_grid
    xi0 = rng.standard_normal((n_samples, 1))
    a = rng.standard_normal((n_samples, kmax)) * sqrt_eig
    b = rng.standard_normal((n_samples, kmax)) * sqrt_eig
    phase = 2 * math.pi * np.outer(k, x)
    return sqrt_eig0 * xi0 + math.sqrt(2) * (a @ np.cos(phase)) + math.sqrt(2) * (b @ np.sin(phase))


def sine_grf(
    n_samples: int,
    n_modes: int,
    *,
    alpha: float = 2.5,
    tau: float = 7.0,
    sigma: float = 70.14,
    rng: np.random.Generator,
) -> np.ndarray:
    """Coefficients ``c_k`` of ``a(x) = sum_k c_k sin(k pi x)`` on ``[-1, 1]`` (Dirichlet).

    ``c_k ~ N(0, sigma^2 (tau^2 + (k pi)^2)^-alpha)``, ``k = 1..n_modes``: the sine-series
    counterpart of ``N(0, sigma^2 (-Laplace + tau^2 I)^-alpha)`` with zero boundary values.
    Returns ``(n_samples, n_modes)`` float64.
    """
    k = np.arange(1, n_modes + 1)
    std = sigma * (tau**2 + (k * math.pi) ** 2) ** (-alpha / 2)
    return rng.standard_normal((n_samples, n_modes)) * std


def eval_fourier(u: np.ndarray, x: np.ndarray, *, length: float = 1.0, x0: float = 0.0):
    """Trigonometric interpolation of periodic grid functions ``u`` ``(B, n)``, sampled at
    ``x0 + length * j / n``, evaluated at arbitrary points ``x``. Returns ``(B, len(x))``."""
    n = u.shape[-1]
    c = np.fft.rfft(u, axis=-1) / n
    j = np.arange(c.shape[-1])
    w = np.full(c.shape[-1], 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0  # the Nyquist mode is counted once
    phase = np.exp(2j * math.pi * np.outer(j, (np.asarray(x, dtype=np.float64) - x0) / length))
    return np.real((c * w) @ phase)


def rbf_grf(
    n_samples: int, x: np.ndarray, *, length_scale: float = 0.2, rng: np.random.Generator
) -> np.ndarray:
    """Samples of a zero-mean GP with kernel ``exp(-|x-x'|^2 / (2 l^2))`` at points ``x``.

    Drawn through an eigendecomposition of the kernel matrix (negative round-off eigenvalues
    clipped), so it is stable on fine grids. Returns ``(n_samples, len(x))`` float64.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    kmat = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length_scale**2)
    w, v = np.linalg.eigh(kmat)
    root = v * np.sqrt(np.clip(w, 0.0, None))
    return rng.standard_normal((n_samples, x.size)) @ root.T


def interp_periodic(u: np.ndarray, n_out: int) -> np.ndarray:
    """Subsample periodic grid functions ``(B, n)`` to ``n_out`` points (``n % n_out == 0``)."""
    n = u.shape[-1]
    if n % n_out:
        raise ValueError(f"n_out: expected a divisor of {n}, got {n_out}")
    return u[..., :: n // n_out]
