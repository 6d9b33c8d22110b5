"""Residual rows sharded over processes with ``torch.distributed``.

Each process holds a block of the residual rows (its data); a Jacobian-vector product is
local, and vector-Jacobian products and the Krylov solvers' inner products over the rows are
all-reduced, so LSMR/LSQR and the Nystrom preconditioner run unchanged on every process and
return the same parameter update everywhere. :class:`ShardedOperator` wraps any rank-local
operator; :class:`ShardedProducts` makes :func:`lsr_scale.refine` build one. See "Beyond one
machine" in ``docs/scale.md`` for a ``torchrun`` example.
"""

from ._comm import backend_and_device
from ._operator import ShardedOperator
from ._products import ShardedProducts

__all__ = ["ShardedOperator", "ShardedProducts", "backend_and_device"]
