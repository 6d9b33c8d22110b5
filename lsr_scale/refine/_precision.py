"""Precision of the Krylov route: float64 iteration around products of another precision.

float32 Krylov vectors stall at the products' rounding level on the ill-conditioned Jacobians
training leaves behind. :class:`MixedPrecisionOperator` gives a float32 operator a float64
face: vectors are rounded to float32 for each product and the results are widened back, so
the solver, its scalars and the preconditioner all run in float64.
"""

from __future__ import annotations

import torch

from ..operators import LinearOperator

__all__ = ["MixedPrecisionOperator", "narrow_ops", "noise_floor"]


def noise_floor(dtype: torch.dtype) -> float:
    """Relative level ``sigma_i / sigma_1`` below which products of ``dtype`` are rounding.

    A product with ``A`` in ``dtype`` carries an error of about ``eps * ||A|| ||x||``; the
    singular directions below ``c * eps * sigma_1`` cannot be told from that error. The
    constant ``c = 25`` (3e-6 in float32) was chosen on measurements (``docs/solvers.md``):
    float32 preconditioners break down below about 1e-7, and physics-informed residuals,
    whose second derivatives amplify rounding, gained from cutting higher (a floor of 3e-6
    gave 3.8e-7 on a float32 Poisson PINN where 1.2e-6 gave 1.0e-6), while plain MLPs lost
    little.
    """
    return 25.0 * torch.finfo(dtype).eps


class MixedPrecisionOperator(LinearOperator):
    """``A`` (products in ``A.dtype``) seen as an operator of the wider ``dtype``.

    Parameters
    ----------
    A : LinearOperator
        The operator whose products are taken (e.g. a float32 ``JacobianOperator``).
    dtype : torch.dtype
        The dtype the solver sees (float64).

    Notes
    -----
    Each product rounds its input to ``A.dtype``, so the operator is linear only up to that
    rounding: the solver converges to within about ``eps(A.dtype) * cond`` of the exact
    float64 answer, and a preconditioner should not reach below :func:`noise_floor`.
    The product counts are ``A``'s.
    """

    def __init__(self, A: LinearOperator, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(A.shape, dtype, A.device)
        self.inner = A
        self._rows = A  # A's row space (and its reductions, when sharded over processes)

    @property
    def num_matvecs(self):
        return self.inner.num_matvecs

    @num_matvecs.setter
    def num_matvecs(self, value):
        pass  # the inner operator counts

    @property
    def num_rmatvecs(self):
        return self.inner.num_rmatvecs

    @num_rmatvecs.setter
    def num_rmatvecs(self, value):
        pass

    def _narrow(self, x):
        return x.to(self.inner.dtype)

    def _matvec(self, x):
        return self.inner.matvec(self._narrow(x)).to(self.dtype)

    def _rmatvec(self, y):
        return self.inner.rmatvec(self._narrow(y)).to(self.dtype)

    def _matmat(self, X):
        return self.inner.matmat(self._narrow(X)).to(self.dtype)

    def _rmatmat(self, Y):
        return self.inner.rmatmat(self._narrow(Y)).to(self.dtype)


class _NarrowSpy(torch.overrides.TorchFunctionMode):
    """Records the functions whose outputs depend on the parameters (require grad) and are
    floating or complex of fewer bits than ``bits`` (a real dtype's)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.found: dict[str, torch.dtype] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.requires_grad and _narrow(t.dtype, self.bits):
                name = getattr(func, "__name__", repr(func))
                self.found.setdefault(name, t.dtype)
        return out


def _narrow(dtype: torch.dtype, bits: int) -> bool:
    if dtype.is_complex:
        return torch.finfo(dtype).bits < bits  # finfo of complex: its real part's
    return dtype.is_floating_point and torch.finfo(dtype).bits < bits


def narrow_ops(module: torch.nn.Module, inputs: tuple, dtype: torch.dtype) -> dict:
    """Functions of ``module``'s forward that compute parameter-dependent values in a
    precision narrower than ``dtype``, ``{name: dtype}`` (empty when none).

    A model converted to float64 can still round inside: neuraloperator 2.0's
    ``SpectralConv`` allocates its output spectrum as ``torch.cfloat`` whatever the model's
    dtype, so a float64 FNO's products are float32-accurate along its spectral path. One
    forward pass on ``inputs`` (with gradients recorded, nothing stored) tells.
    """
    bits = torch.finfo(dtype).bits
    spy = _NarrowSpy(bits)
    with torch.enable_grad(), spy:
        module(*inputs)
    return spy.found


def narrowest(found: dict) -> torch.dtype | None:
    """The real dtype of the narrowest entry of :func:`narrow_ops`' answer (``None``: none)."""
    if not found:
        return None
    dt = min(found.values(), key=lambda d: torch.finfo(d).bits)
    return dt.to_real() if dt.is_complex else dt
