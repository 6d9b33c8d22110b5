"""``Products`` whose Jacobians are sharded over processes: the way ``refine`` goes distributed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..refine._methods import Products
from ._comm import resolve_group
from ._operator import ShardedOperator, shard_of

__all__ = ["ShardedProducts"]


@dataclass(frozen=True)
class ShardedProducts(Products):
    """:class:`~lsr_scale.Products` for data (or a residual) split by rows over processes.

    Pass it as ``refine(..., products=ShardedProducts(...))`` on every process of the group,
    each with its own rows: ``data=(local_x, local_y)`` or a ``residual_fn`` over its own
    points. ``refine`` then linearizes locally and wraps the Jacobian in a
    :class:`ShardedOperator`, so the problem solved is the one on all rows together, and every
    process returns the same :class:`~lsr_scale.RefinedModel` (the same ``delta``).

    Parameters
    ----------
    process_group : torch.distributed.ProcessGroup, optional
        The processes that hold the rows (default: the default group, which must be
        initialized when ``refine`` runs).
    jvp, chunk_size, batch_size, batching
        As in :class:`~lsr_scale.Products`, for each process's own products.

    Notes
    -----
    *What runs sharded.* ``ls.Krylov`` in parameter space (LSMR or LSQR) with a Nystrom
    preconditioner (``"svd"`` or ``"nystrom"`` build; ``"auto"`` means Nystrom here), an
    exact Jacobi preconditioner on a Jacobian with no more columns than rows, or none;
    ``damp``, ``target_rank``, ``precision``, ``stall`` and ``validation=`` (each process may
    pass its own validation rows, or all the same ones). ``ls.Subspace``, sample space and
    the sketch preconditioner are refused.

    *Randomness.* The preconditioner's test vectors must be the same on every process: give
    every process a generator seeded identically (``torch.Generator().manual_seed(s)`` with
    one ``s``), or seed torch's global RNG identically.

    *Failures.* The linearization checks run on each process's rows; if one fails on any
    process, ``refine`` raises on all of them instead of leaving the others waiting.

    *Info.* ``n_rows``, ``loss_before`` and ``loss_linearized`` in ``refined.info`` are
    global; ``num_jvp``/``num_vjp`` and the times are this process's.
    """

    process_group: object = None

    def __post_init__(self):
        super().__post_init__()
        pg = self.process_group
        if pg is not None and not (dist.is_available() and isinstance(pg, dist.ProcessGroup)):
            raise TypeError(
                "ShardedProducts.process_group: expected a torch.distributed.ProcessGroup or "
                f"None (the default group), got {type(pg).__name__}"
            )

    def jacobian(self, model, inputs, targets=None, *, params=None, check=True):
        """The sharded Jacobian operator of ``model(*inputs) - targets`` over this process's
        rows (every process of the group calls it together)."""
        resolve_group(self.process_group, "ShardedProducts")
        device = _device_of(model)

        def local():
            return Products.jacobian(self, model, inputs, targets, params=params, check=check)

        return shard_of(local, self.process_group, device=device, what="linearize (data=)")

    def residual_jacobian(self, residual_fn, theta) -> ShardedOperator:
        """The sharded Jacobian operator of ``residual_fn`` (this process's residual rows)."""
        resolve_group(self.process_group, "ShardedProducts")
        device = next(iter(theta.values())).device if theta else torch.device("cpu")

        def local():
            return Products.residual_jacobian(self, residual_fn, theta)

        return shard_of(local, self.process_group, device=device, what="linearize (residual_fn)")


def _device_of(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
