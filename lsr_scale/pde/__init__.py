"""Physics-informed residuals: input derivatives of networks and weighted residual blocks.

The derivative helpers act on a pointwise scalar function ``f(x, *rows)`` (see
:func:`scalar_fn`) and ``vmap`` over the points; they compose with ``torch.func`` transforms
in the parameters, so a residual built from them works under
:class:`lsr_scale.JacobianOperator`. :func:`forward_laplacian` is the fast route for MLPs,
modified MLPs and DeepONet trunks, and :func:`laplacian` given a network picks it where it
applies (``torch.func`` otherwise). :func:`stack_residuals` joins PDE, boundary and initial
blocks with the weights ``sqrt(lambda_i * N_total / N_i)``.
"""

from ._derivatives import (
    directional_derivative,
    gradient,
    hessian,
    laplacian,
    partial,
    scalar_fn,
    value,
    value_and_gradient,
    value_and_laplacian,
)
from ._forward_laplacian import forward_laplacian, supports_forward_laplacian
from ._residuals import ResidualBlock, stack_residuals

__all__ = [
    "scalar_fn",
    "value",
    "gradient",
    "value_and_gradient",
    "partial",
    "hessian",
    "laplacian",
    "value_and_laplacian",
    "directional_derivative",
    "forward_laplacian",
    "supports_forward_laplacian",
    "ResidualBlock",
    "stack_residuals",
]
