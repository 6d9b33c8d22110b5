"""How :class:`~lsr_scale.JacobianOperator` takes a product: column batching and memory.

Batching rule
-------------
``batching="vmap"`` takes a group of ``batch_size`` columns in one ``torch.vmap`` call;
``"loop"`` takes them one column at a time. ``"auto"`` is a rule on what is known at
construction, never a timing:

* ``"loop"`` on the CPU, and for parameters that include complex tensors on any device;
* ``"vmap"`` otherwise (real parameters on a GPU).

Measured on a 2-core x86 CPU with one thread (torch 2.13; ``bench/bench_batching.py``,
``bench/results/batching_cpu.md``; 64 columns, float32): vmap was faster per column only
where one product is tiny and dominated by per-operation overhead (an MLP or a DeepONet on
200 rows, a small Fourier-layer model: 2 to 4 times, saving at most about 2 ms per column),
and mostly slower as products grow (the same MLP and DeepONet on 2,000 rows, 1.3 to 1.7
times; an FNO-sized Fourier model, 2.3 to 2.7 times, some 80 ms per column; issue 11
measured 3.8 times on neuraloperator's FNO). On the CPU the rule takes the loop, which is
never slower than itself and gives up little where vmap wins; ``batching="vmap"`` is there
for small models. On a GPU vmap turns ``k`` small kernel launches into one (not measured
here); complex FFT graphs, the case measured slowest under vmap, loop on every device.

Out of memory
-------------
When a product runs out of memory (:func:`is_out_of_memory`), it is retried smaller, and the
smaller size is kept for every later product:

1. a batch of ``b > 1`` vmap columns is halved (``batch_size`` becomes ``b // 2``);
2. when a single column does not fit (or the columns are looped), the row chunk is halved:
   every row block longer than half the failing block is split in two. Only operators made
   by :meth:`~lsr_scale.JacobianOperator.from_module` can split their rows (a residual
   function's rows are its own); for the others the error propagates, with a note.

Each change issues a ``RuntimeWarning`` that says what was changed.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["BATCHINGS", "resolve_batching", "is_out_of_memory", "BlockProducts"]

BATCHINGS = ("auto", "vmap", "loop")

# The message of the CPU allocator's failure (a plain RuntimeError, not OutOfMemoryError).
_CPU_OOM_MESSAGE = "can't allocate memory"


def resolve_batching(batching: str, device: torch.device, has_complex: bool) -> str:
    """``"vmap"`` or ``"loop"`` for the setting ``batching`` (the rule in the module doc)."""
    if batching != "auto":
        return batching
    if torch.device(device).type == "cpu" or has_complex:
        return "loop"
    return "vmap"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator running out of memory (any device)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and _CPU_OOM_MESSAGE in str(err)


class BlockProducts:
    """Products block by block, with the out-of-memory rule of the module doc.

    Mixed into :class:`~lsr_scale.JacobianOperator`, which provides ``_backend``,
    ``row_slices``, ``batch_size``, ``shape``, ``_can_split(i)`` (whether row block ``i``
    can be split) and ``_split_rows(i, what)`` (halve the row chunk; returns the message).
    """

    def _groups(self, k: int) -> list[slice]:
        b = self.batch_size or max(k, 1)
        return [slice(s, min(s + b, k)) for s in range(0, k, b)]

    def _block_at(self, row: int) -> int:
        """The index of the block whose rows start at ``row``."""
        for i, rows in enumerate(self.row_slices):
            if rows.start == row:
                return i
        raise AssertionError(f"no row block starts at row {row}")  # pragma: no cover

    def _product(self, i: int, X: torch.Tensor, transpose: bool):
        """``J_i @ X`` or ``J_i^T @ X[rows_i]``; None after a split of the blocks (retry)."""
        what = "VJP" if transpose else "JVP"
        while True:
            groups = self._groups(X.shape[1])
            width = max(g.stop - g.start for g in groups)
            halve = width > 1 and self._backend.batching == "vmap"
            halve = halve and self._backend.vmap_error is None
            try:
                if transpose:
                    return self._backend.rmatmat(i, X[self.row_slices[i]], groups)
                return self._backend.matmat(i, X, groups)
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                if not halve and not self._can_split(i):
                    rows = self.row_slices[i]
                    err.add_note(
                        f"JacobianOperator: one {what} column of row block {i} (residual rows "
                        f"{rows.start}:{rows.stop}) does not fit in memory; split the residual "
                        "into more row blocks (a list of callables, or from_module's "
                        "chunk_size=)"
                    )
                    raise
            # Outside the except block, so that the failed attempt's frames (and the tensors
            # they hold) are freed before the retry.
            if halve:
                self.batch_size = width // 2
                message = (
                    f"out of memory in a batch of {width} {what} columns; retrying with "
                    f"{width // 2} (batch_size is now {width // 2})"
                )
            else:
                message = self._split_rows(i, what)
            warnings.warn(f"JacobianOperator: {message}", RuntimeWarning, stacklevel=2)
            if not halve:
                return None

    def _each_block(self, X: torch.Tensor, transpose: bool):
        """Yield ``(row_slice, product)`` over the row blocks, in row order, splits included."""
        row = 0
        while row < self.shape[0]:
            i = self._block_at(row)
            out = self._product(i, X, transpose)
            if out is None:  # the blocks were split: the block at this row is smaller now
                continue
            rows = self.row_slices[i]
            yield rows, out
            row = rows.stop

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmat(x[:, None])[:, 0]

    def _rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self._rmatmat(y[:, None])[:, 0]

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[1] == 0:
            return X.new_zeros(self.shape[0], 0)
        return torch.cat([out for _, out in self._each_block(X, False)], dim=0)

    def _rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        if Y.shape[1] == 0:
            return Y.new_zeros(self.shape[1], 0)
        total = None
        for _, part in self._each_block(Y, True):
            total = part if total is None else total + part
        return total

    def _matmat_blocks(self, V):
        if V.shape[1] == 0:
            for rows in list(self.row_slices):
                yield rows, V.new_zeros(rows.stop - rows.start, 0)
        else:
            yield from self._each_block(V, False)
        self.num_matvecs += V.shape[1]
