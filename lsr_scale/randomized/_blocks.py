"""Column-blocked products that survive running out of memory.

The builds of the preconditioners (and the randomized SVD) push blocks of columns through an
operator. When a block runs out of memory, it is halved and retried, with a
``RuntimeWarning`` that says what was changed, and the smaller size is kept for the rest of
the build. The columns are the same either way, so an operator whose products do not depend
on how many columns go at once (a :class:`~lsr_scale.JacobianOperator` in a loop, or any
column-by-column product) gives bitwise the same build.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["is_out_of_memory", "run_blocks", "blocked_apply"]

# The message of the CPU allocator's failure (a plain RuntimeError, not OutOfMemoryError).
_CPU_OOM_MESSAGE = "can't allocate memory"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator running out of memory (any device)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and _CPU_OOM_MESSAGE in str(err)


def run_blocks(k: int, size: int | None, step, *, what: str, setting: str, device=None) -> int:
    """Call ``step(j0, j1)`` on consecutive column ranges of at most ``size`` columns that
    cover ``range(k)``, in order; return the block size in effect at the end.

    When a step runs out of memory with more than one column, the block is halved and that
    range retried (the earlier ranges are kept), with a ``RuntimeWarning`` naming ``what``
    (e.g. ``"RangeFinder: A.matmat"``) and ``setting`` (the parameter that now holds the
    smaller size). A single column that does not fit re-raises the error. ``size`` None: all
    ``k`` at once.
    """
    size = k if size is None else size
    j = 0
    while j < k:
        b = min(size, k - j)
        try:
            step(j, j + b)
        except RuntimeError as err:
            if b <= 1 or not is_out_of_memory(err):
                raise
        else:
            j += b
            continue
        # Outside the except block, so that the failed attempt's frames (and the tensors
        # they hold) are freed before the retry.
        size = b // 2
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(
            f"{what}: out of memory on a block of {b} columns; retrying with {size} "
            f"column{'s' if size > 1 else ''} per block ({setting}={size} for the rest of "
            "this build)",
            RuntimeWarning,
            stacklevel=3,
        )
    return size


def blocked_apply(
    apply, X: torch.Tensor, block_size: int | None, *, what: str, setting="block_size"
):
    """``(apply(X), block_size)``: at most ``block_size`` columns of ``X`` per call (None:
    all at once), halved on out-of-memory as in :func:`run_blocks`. The returned size is
    the one to use from now on (None when all columns went at once)."""
    k = X.shape[1]
    if k == 0:
        return apply(X), block_size
    out = {}

    def step(j0, j1):
        Yb = apply(X if (j0, j1) == (0, k) else X[:, j0:j1].contiguous())
        if (j0, j1) == (0, k):
            out["Y"] = Yb
            return
        if "Y" not in out:  # the blocks fill one result: never the blocks and a copy at once
            out["Y"] = Yb.new_empty((Yb.shape[0], k))
        out["Y"][:, j0:j1] = Yb

    size = run_blocks(k, block_size, step, what=what, setting=setting, device=X.device)
    Y = out["Y"]
    if block_size is None and size >= k:
        return Y, None
    return Y, size
