"""A linear operator whose rows are sharded over the processes of a ``torch.distributed`` group."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..operators import LinearOperator, aslinearoperator
from ._comm import agree, all_gather_1d, all_reduce_sum, resolve_group

__all__ = ["ShardedOperator", "shard_of"]

# Attributes of a local JacobianOperator that refine and the methods read through the
# sharded one (all describe this process's rows or the shared parameters).
_FORWARDED = ("residual", "param_names", "jvp_mode", "uses_linearize", "vmap_error")


class ShardedOperator(LinearOperator):
    """The operator ``A = [A_0; A_1; ...]`` whose row block ``A_r`` lives on process ``r``.

    Each process of ``process_group`` wraps its own block ``local`` (an ``(n_r, m)``
    :class:`~lsr_scale.LinearOperator`, e.g. the :class:`~lsr_scale.JacobianOperator` of its
    rows of data); all of them must construct the operator together (it gathers the block
    sizes). The result is the global ``(n, m)`` operator, ``n = sum(n_r)``, seen from one
    process:

    * vectors in the input (parameter) space, length ``m``, are **replicated**: every process
      passes the same ``x`` and gets the same ``A^T y``;
    * vectors in the output (row) space hold **this process's rows** only: ``matvec``
      returns ``A_r x`` (``local_shape[0] = n_r`` entries, no communication) and
      ``rmatvec(y_r)`` returns ``sum_r A_r^T y_r`` (one all-reduce of ``m`` numbers);
    * the row-space hooks the solvers and the range finder use (``row_norm``, ``row_dot``,
      ``row_reduce``, ``row_orth``) return global values, the same on every process.

    So :func:`lsr_scale.lsmr`, :func:`lsr_scale.lsqr` and the Nystrom preconditioner's build
    run unchanged on it, on every process at once, and produce the same (replicated) iterates
    as on the whole operator in one process, up to rounding. One LSMR iteration costs one
    local JVP, one local VJP, one all-reduce of ``m`` numbers and one all-gather of a scalar.

    Parameters
    ----------
    local : LinearOperator or anything :func:`lsr_scale.aslinearoperator` accepts
        This process's row block, with at least one row. Its ``rmatvec``/``rmatmat`` must
        return fresh tensors (the all-reduce works in place; all of lsr_scale's do).
    process_group : torch.distributed.ProcessGroup, optional
        The processes that hold the blocks (default: the default group). Rank order is row
        order.

    Attributes
    ----------
    local : LinearOperator
        The row block of this process.
    group, rank, world_size
        The process group, this process's rank in it and its size.
    row_counts : tuple of int
        ``n_r`` of every process; ``row_offset`` is where this process's rows start.

    Raises
    ------
    RuntimeError
        Without an initialized default process group.
    ValueError, TypeError
        On every process at once, when the blocks disagree in columns, dtype or device type,
        or one of them has no rows.

    Notes
    -----
    *Communication.* NCCL needs the blocks on ``cuda:local_rank``; gloo takes CPU tensors.
    The collectives are issued in the same order on every process because the solvers take
    the same branches everywhere: every number they branch on comes out of a collective that
    returns bitwise the same value on all processes (scalars are all-gathered and combined in
    rank order on each process). The reductions are not in the order of a one-process run, so
    results agree with it to rounding, not bitwise.

    *Randomness.* The test vectors of a preconditioner live in the parameter space and must
    be the same on every process: pass every process a generator seeded with the same seed
    (or seed torch's global RNG identically).

    *QR.* ``row_orth`` is a TSQR: a local QR per process, an all-gather of the small ``R``
    factors and a QR of their stack (the same on every process).

    Examples
    --------
    Under ``torchrun --nproc-per-node 2`` (each process holds half the rows of ``G``)::

        import torch, torch.distributed as dist, lsr_scale as ls
        from lsr_scale.distributed import ShardedOperator
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        G = torch.randn(100, 20, generator=torch.Generator().manual_seed(0))
        b = torch.ones(100)
        A = ShardedOperator(G[50 * rank : 50 * (rank + 1)])
        x = ls.lsmr(A, b[50 * rank : 50 * (rank + 1)]).x    # the same x on both processes
    """

    #: The rows are distributed (the hooks of :class:`~lsr_scale.LinearOperator` are
    #: overridden below).
    row_sharded = True

    def __init__(self, local, process_group=None) -> None:
        group = resolve_group(process_group, "ShardedOperator.process_group")
        local = aslinearoperator(local)
        if local.row_sharded:
            raise ValueError(
                "local: expected this process's row block, got an operator that is already "
                "row-sharded"
            )
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        n_r, m = local.shape
        code = _DTYPES.index(local.dtype) if local.dtype in _DTYPES else -1
        info = torch.tensor(
            [n_r, m, code, int(local.device.type == "cuda")],
            dtype=torch.int64,
            device=local.device,
        )
        table = all_gather_1d(info, group).tolist()  # the same table on every process
        counts = [row[0] for row in table]
        if len({row[1] for row in table}) != 1:
            raise ValueError(
                "local: expected row blocks with one number of columns on every process, got "
                f"{[row[1] for row in table]} (by rank)"
            )
        if len({row[2] for row in table}) != 1 or code < 0:
            raise TypeError(
                "local: expected row blocks of one floating dtype on every process, got "
                f"{[_dtype_name(row[2]) for row in table]} (by rank)"
            )
        if len({row[3] for row in table}) != 1:
            raise ValueError(
                "local: expected row blocks on one device type on every process, got "
                f"{['cuda' if row[3] else 'cpu' for row in table]} (by rank)"
            )
        if min(counts) == 0:
            raise ValueError(
                f"local: expected at least one row on every process, got row counts {counts} "
                "(by rank)"
            )
        super().__init__((sum(counts), m), local.dtype, local.device)
        self.local = local
        self.group = group
        self.rank, self.world_size = rank, world
        self.row_counts = tuple(counts)
        self.row_offset = sum(counts[:rank])

    # ------------------------------------------------------------------ sizes
    @property
    def local_shape(self) -> tuple[int, int]:
        """``(n_r, m)``: this process's rows, and all the columns."""
        return self.local.shape

    def __getattr__(self, name):
        # only reached for attributes not found normally: forward the Jacobian's descriptive
        # ones (the residual is this process's rows), refuse the rest
        local = self.__dict__.get("local")
        if name in _FORWARDED and local is not None:
            return getattr(local, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ products
    def _reduce(self, out: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
        # the all-reduce works in place: never on the caller's tensor or a view of another
        if out._is_view() or not out.is_contiguous() or out.data_ptr() == arg.data_ptr():
            out = out.clone(memory_format=torch.contiguous_format)
        return all_reduce_sum(out, self.group)

    def _matvec(self, x):
        return self.local.matvec(x)

    def _matmat(self, X):
        return self.local.matmat(X)

    def _rmatvec(self, y):
        return self._reduce(self.local.rmatvec(y), y)

    def _rmatmat(self, Y):
        return self._reduce(self.local.rmatmat(Y), Y)

    # ------------------------------------------------------------------ row space
    def row_norm(self, u: torch.Tensor) -> torch.Tensor:
        """The global ``||u||``: the norm of the gathered local norms (no overflow from
        squaring, and bitwise the same on every process)."""
        local = torch.linalg.vector_norm(u)
        return torch.linalg.vector_norm(all_gather_1d(local, self.group))

    def row_dot(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The global ``u^T w``: the local dots gathered and summed in rank order."""
        return all_gather_1d(torch.dot(u, w), self.group).sum()

    def row_reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of ``partial`` over the processes (all-reduce of a copy)."""
        return all_reduce_sum(partial.clone(memory_format=torch.contiguous_format), self.group)

    def row_orth(self, Y: torch.Tensor) -> torch.Tensor:
        """``Q`` of the reduced QR of the row-sharded ``Y`` (this process's rows), by TSQR.

        ``Y_r = Q_r R_r`` locally; the stacked ``[R_0; R_1; ...] = Q' R`` (the same small QR on
        every process); ``Q = diag(Q_r) Q'``, of which this process keeps its rows
        ``Q_r Q'_r``. ``Q`` has ``min(n, k)`` orthonormal columns, as a one-process QR.
        """
        k = Y.shape[1]
        Q1, R1 = torch.linalg.qr(Y, mode="reduced")
        p = [min(c, k) for c in self.row_counts]  # rows of each process's R factor
        buf = Y.new_zeros((k, k))
        buf[: R1.shape[0]] = R1
        gathered = all_gather_1d(buf, self.group)
        stack = torch.cat([gathered[r, : p[r]] for r in range(self.world_size)])
        Q2 = torch.linalg.qr(stack, mode="reduced").Q
        off = sum(p[: self.rank])
        return Q1 @ Q2[off : off + p[self.rank]]

    def __repr__(self) -> str:
        return (
            f"<ShardedOperator shape={self.shape} local rows {self.row_offset}:"
            f"{self.row_offset + self.local_shape[0]} on rank {self.rank} of {self.world_size} "
            f"dtype={self.dtype} device={self.device}>"
        )


_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]).replace("torch.", "") if 0 <= code < len(_DTYPES) else "other"


def shard_of(local_fn, process_group=None, *, device, what="linearize") -> ShardedOperator:
    """``ShardedOperator(local_fn(), process_group)``, where a failure of ``local_fn`` on any
    process raises on all of them (instead of leaving the others waiting in a collective).
    ``device``: where the control flag goes (the device the blocks will be on)."""
    group = resolve_group(process_group, "process_group")
    local = agree(local_fn, group, what, device)
    return ShardedOperator(local, group)
