"""What a Jacobian back end provides, and what the back ends share.

:class:`~lsr_scale.JacobianOperator` owns the rows (blocks), the checks and the counters;
a back end only takes products of one row block with a group of columns:

* ``matmat(i, V, groups)``: ``J_i @ V`` for ``V`` of shape ``(m, k)``, shape ``(n_i, k)``;
* ``rmatmat(i, W, groups)``: ``J_i^T @ W`` for ``W`` of shape ``(n_i, k)``, shape ``(m, k)``;

where ``groups`` are column slices taken together in one batched (``vmap``) product when
the back end's ``batching`` is ``"vmap"``, one column at a time when it is ``"loop"`` (the
rule that chooses between them is in :mod:`lsr_scale.operators._products`).
Two back ends exist: :class:`~lsr_scale.operators._forward.ForwardBackend` (``torch.func``)
and :class:`~lsr_scale.operators._double_vjp.DoubleVJPBackend` (plain autograd graphs).

Batched products and their one fallback
---------------------------------------
With ``batching="vmap"``, a group of ``k > 1`` columns is one ``torch.vmap`` call
(``is_grads_batched`` for autograd, which is vmap inside). A residual that vmap cannot
batch, e.g. a custom ``torch.autograd.Function`` without a vmap rule, or data-dependent
control flow on a batched tensor, makes vmap raise. Exactly that case is caught: a
``RuntimeError`` or ``NotImplementedError`` (never out-of-memory) whose message names vmap
or a batching rule (:func:`is_vmap_error`). The same group is then computed one column at a
time; if that succeeds, the back end records the vmap error in ``vmap_error``, warns once,
and takes every later group one column at a time as well (the residual is the same, so vmap
would fail the same way). If the loop fails too, its error propagates: the bug is not
vmap's. Any other error propagates at once.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["Backend", "is_vmap_error", "probe_vector"]

# Message fragments (lower case) of the errors torch raises when vmap cannot batch a function.
_VMAP_MESSAGES = ("vmap", "batching rule")

# (sqrt(5) - 1) / 2: the increment of the probe vectors' Weyl sequence.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def is_vmap_error(err: BaseException) -> bool:
    """Whether ``err`` is torch saying that vmap cannot batch the function (see module doc)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return False
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return False
    msg = str(err).lower()
    return any(s in msg for s in _VMAP_MESSAGES)


def probe_vector(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A fixed, non-random test vector of length ``n``.

    Entry ``i`` is ``frac((i + 1) g) - 1/2`` with ``g = (sqrt(5) - 1) / 2``, a Weyl sequence:
    the entries are spread over ``(-1/2, 1/2)``, none is zero and no two are equal, so a
    nonzero linear form vanishes on it only by coincidence. Construction-time probes and
    checks of :class:`~lsr_scale.JacobianOperator` use it in place of random vectors, so they
    neither draw from nor depend on any random number generator.

    Examples
    --------
    >>> import torch
    >>> probe_vector(4, torch.float64, "cpu")
    tensor([ 0.1180, -0.2639,  0.3541, -0.0279], dtype=torch.float64)
    """
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return (torch.frac(i * _GOLDEN) - 0.5).to(dtype=dtype, device=device)


class Backend:
    """Products of one row block of a Jacobian with groups of columns (see the module doc).

    Parameters
    ----------
    fns : list of callable
        The row blocks' residual functions, ``fn(params) -> Tensor``.
    params : dict of str to torch.Tensor
        ``theta0`` (detached).
    block_shapes : list of tuple
        The shape of each block's residual.
    cache : bool
        Keep what is built once per block (the subclass says what).
    batching : {"vmap", "loop"}
        How a group of columns is taken: one ``vmap`` call, or a loop of single products.

    Attributes
    ----------
    mode : str
        ``"forward"`` or ``"double_vjp"``.
    uses_linearize : bool
    vmap_error : str or None
        ``None`` while groups are batched with vmap; the vmap error once a residual that vmap
        cannot batch switched this back end to one column at a time.
    """

    mode = ""
    uses_linearize = False

    def __init__(self, fns, params, block_shapes, *, cache: bool, batching: str = "vmap"):
        self.fns = fns
        self.params = params
        self.block_shapes = block_shapes
        self.cache = cache
        self.batching = batching
        self.vmap_error: str | None = None

    def split_block(self, i: int) -> None:
        """Rebuild the per-block state after the caller split block ``i`` into two.

        ``fns`` and ``block_shapes`` (the caller's lists) already hold the two halves at
        ``i`` and ``i + 1``; the state built for the whole block is dropped first, so that
        its memory is free before the halves' state is built.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def matmat(self, i: int, V: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def rmatmat(self, i: int, W: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def columns(self, k: int, batched, column) -> torch.Tensor:
        """``batched()`` (all ``k`` columns at once), or ``column(j)`` for each ``j`` stacked.

        ``batched`` returns a ``(d, k)`` matrix and ``column(j)`` a ``(d,)`` vector. One column,
        ``batching="loop"``, or a back end that vmap cannot batch, takes the loop; the
        fallback from a failed vmap is the narrow one described in the module doc.
        """
        if k > 1 and self.batching == "vmap" and self.vmap_error is None:
            try:
                return batched()
            except (RuntimeError, NotImplementedError) as err:
                if not is_vmap_error(err):
                    raise
                out = torch.stack([column(j) for j in range(k)], dim=1)
                self.vmap_error = f"{type(err).__name__}: {err}"
                warnings.warn(
                    "JacobianOperator: torch.vmap cannot batch this residual "
                    f"({self.vmap_error.splitlines()[0]}); taking batched products one "
                    "column at a time from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return out
        return torch.stack([column(j) for j in range(k)], dim=1)
