"""Linear operators: the matrix-free objects every solver in lsr_scale acts on."""

from ._base import (
    DiagonalOperator,
    IdentityOperator,
    LinearOperator,
    MatrixOperator,
    SubspaceOperator,
    aslinearoperator,
)
from ._jacobian import JacobianOperator
from ._module import module_jvp
from ._params import flatten_params, unflatten_params

__all__ = [
    "LinearOperator",
    "aslinearoperator",
    "MatrixOperator",
    "IdentityOperator",
    "DiagonalOperator",
    "SubspaceOperator",
    "JacobianOperator",
    "flatten_params",
    "unflatten_params",
    "module_jvp",
]
