"""Memory model of a refinement: peak bytes before anything is allocated, and chunk sizes.

:func:`estimate` gives the peak bytes of ``refine`` as a sum of named parts, from the
sizes of the problem: parameters ``m``, residual rows ``n`` (data rows ``N`` times outputs),
preconditioner or subspace rank ``l``, product batch ``b``, row chunk and dtype. The
activations a Jacobian operator caches (one forward pass over all rows, twice with the
linearization) are measured from one forward pass of a few rows
(:func:`activation_bytes_per_row`). The formulas, their constants and how they compare
with measured peaks are in ``docs/scale.md``; ``tests/test_memory.py`` holds them to within
2x of measured peaks on the CPU.

This is the bottom layer of planning: it knows sizes, not methods. Each method reports its
own parts (``memory_parts``); :mod:`lsr_scale.refine._plan` chooses settings that fit a
budget from them, and is what :func:`lsr_scale.refine` and :func:`lsr_scale.plan` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "MemoryEstimate",
    "Sizes",
    "activation_bytes",
    "activation_bytes_per_row",
    "available_bytes",
    "choose_block",
    "estimate",
    "largest",
    "sizes_of",
]

_MIB = 1024**2
# A product batch on the CPU (loop batching) costs the same per column at any size, so it
# only has to be large enough to amortize Python overhead; on a GPU (vmap) wider is faster.
_LOOP_TRANSIENT_CAP = 64 * _MIB
# The share of the free memory one batch of columns may take.
_BATCH_SHARE = 8


@dataclass
class MemoryEstimate:
    """Peak bytes of a refinement, by part.

    Attributes
    ----------
    parts : dict of str to int
        Bytes of each part that is alive at the peak (``"model"``, ``"cache"``,
        ``"basis"``, ``"build"``, ``"solver"``, ``"product"``, ...).
    sizes : dict
        The sizes the estimate was computed from.
    """

    parts: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Sum of the parts (bytes)."""
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        """``"1.23 GB (cache 0.50 GB, basis 0.70 GB, ...)"``."""
        items = sorted(self.parts.items(), key=lambda kv: -kv[1])
        inner = ", ".join(f"{k} {_gb(v)}" for k, v in items if v >= 0.01 * self.total)
        return f"{_gb(self.total)} ({inner})"


def _gb(x: float) -> str:
    """Bytes for people: GB from 1 GB up, MB below."""
    return f"{x / 1e9:.2f} GB" if x >= 1e9 else f"{x / 1e6:.1f} MB"


# ---------------------------------------------------------------------- what is there
def available_bytes(device=None) -> int:
    """Memory a new allocation can take now.

    CUDA: the free bytes of ``torch.cuda.mem_get_info`` plus what torch's caching allocator
    holds unused. CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``2**62``.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def activation_bytes(fn, theta: dict) -> float:
    """Bytes autograd saves in one evaluation of ``fn(params)``, plus its output's.

    ``fn`` runs once on fresh leaves for the parameters ``theta`` (the caller's tensors are
    not touched) with gradients enabled; the tensors saved for the backward pass
    (``torch.autograd.graph.saved_tensors_hooks``) are counted, parameters excluded. For a
    ``residual_fn`` this is all its rows (:func:`activation_bytes_per_row` divides by rows).
    """
    params = {k: v.detach().requires_grad_() for k, v in theta.items()}
    ptrs = {v.data_ptr() for v in params.values()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in ptrs:
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(params)
    return float(sum(seen.values()) + out.numel() * out.element_size())


def activation_bytes_per_row(model: torch.nn.Module, inputs, rows: int = 8) -> float:
    """Bytes autograd saves per data row in one forward pass (the cached VJP's share):
    :func:`activation_bytes` of the model on its first ``rows`` rows, per row."""
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    rows = max(1, min(int(rows), int(inputs[0].shape[0])))
    small = tuple(x[:rows] for x in inputs)
    theta = dict(model.named_parameters())
    total = activation_bytes(lambda p: torch.func.functional_call(model, p, small), theta)
    return total / rows


def choose_block(m: int, dtype, device, *, limit: int = 64, free: int | None = None) -> int:
    """Columns per batch of ``m``-sized products: at most ``limit``, and small enough that the
    batch (about ``2 m b`` numbers while its columns are stacked) takes at most an eighth of
    the free memory (on the CPU also at most 64 MiB: there a batch is a loop of single
    products, no faster when wider)."""
    free = available_bytes(device) if free is None else free
    budget = free // _BATCH_SHARE
    if torch.device(device).type != "cuda":
        budget = min(budget, _LOOP_TRANSIENT_CAP)
    per_col = 2 * m * torch.empty((), dtype=dtype).element_size()
    return int(max(1, min(limit, budget // max(per_col, 1))))


def largest(fits, hi: int) -> int:
    """The largest ``k`` in ``[1, hi]`` with ``fits(k)`` (``fits`` monotone), 0 if none: the
    methods' "largest rank that fits" lever."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Sizes:
    """What the memory of a refinement depends on, besides the method's own settings.

    ``estimate`` builds it; each method's ``memory_parts(sizes)`` reads it. See
    :func:`estimate` for the fields.
    """

    m: int
    n: int
    rows: int
    act_row: float
    dtype: torch.dtype
    product_dtype: torch.dtype
    batch: int
    chunk: int | None
    linearize: bool
    vmap: bool
    self_check: bool
    model_copy: bool
    cache: bool = True

    @property
    def s(self) -> int:
        """Bytes per number of the products."""
        return torch.empty((), dtype=self.product_dtype).element_size()

    @property
    def per_col_act(self) -> float:
        # Measured on the CPU (tests/test_memory.py): one column's JVP or VJP holds about 4x
        # the tensors autograd saves in a plain forward pass of its row chunk.
        widen = self.s / torch.empty((), dtype=self.dtype).element_size()
        chunk_rows = self.rows if self.chunk is None else min(self.chunk, self.rows)
        return 4 * chunk_rows * self.act_row * widen

    def product(self, k: int) -> float:
        """One batch of ``k`` columns of products: their outputs and their activations."""
        width = min(k, self.batch) if self.batch else k
        return 2 * self.m * width * self.s + self.per_col_act * (width if self.vmap else 1)


def sizes_of(*, m, n, rows=None, act_row=0.0, dtype=torch.float32, product_dtype=None,
             batch=64, chunk=None, linearize=True, vmap=False, self_check=True,
             model_copy=False, cache=True) -> Sizes:  # fmt: skip
    """The :class:`Sizes` of :func:`estimate`'s keywords (same defaults)."""
    return Sizes(
        m=int(m), n=int(n), rows=int(n if rows is None else rows), act_row=float(act_row),
        dtype=dtype, product_dtype=product_dtype or dtype, batch=batch, chunk=chunk,
        linearize=linearize and cache, vmap=vmap, self_check=self_check,
        model_copy=model_copy, cache=cache,
    )  # fmt: skip


def estimate(
    method,
    *,
    m: int,
    n: int,
    rows: int | None = None,
    act_row: float = 0.0,
    dtype=torch.float32,
    product_dtype=None,
    batch: int = 64,
    chunk: int | None = None,
    linearize: bool = True,
    vmap: bool = False,
    model_copy: bool = False,
    self_check: bool = True,
    cache: bool = True,
) -> MemoryEstimate:
    """Peak bytes of ``refine(model, data, method=method)`` added to what exists before.

    The parts every refinement has (the model copy, the cached activations, the residual
    vectors, the self-check) are counted here; the method's own (basis, build, solver,
    product batches) by its ``memory_parts(sizes)``, so this layer knows no method.

    Parameters
    ----------
    method : Subspace or Krylov
        The method object (its rank, space and preconditioner are read).
    m, n : int
        Parameters and residual entries.
    rows : int, optional
        Data rows (default ``n``: one output per row).
    act_row : float
        Activation bytes per data row of one forward pass in the model's dtype
        (:func:`activation_bytes_per_row`).
    dtype : torch.dtype
        The model's dtype (the precision the user works in).
    product_dtype : torch.dtype, optional
        The dtype products are taken in (default ``dtype``); a wider one means a converted
        copy of the model and activations of that width.
    batch : int
        Columns per batch of products (``Products.batch_size``).
    chunk : int, optional
        Data rows per row block (``Products.chunk_size``; default all).
    linearize : bool
        Whether the operator caches a linearization besides the VJP (forward mode).
    vmap : bool
        Whether a batch of columns runs in one ``vmap`` call (GPU) or a loop (CPU).
    self_check : bool
        Whether the operator checks its products when built (``Products.self_check``): a
        fresh ``torch.func.jvp`` over each row block, whose activations (the primal's and
        the tangent's, about twice a linearized column's) are alive at construction, when
        no product batch is. Counted as ``"check"``: what that exceeds the product part by.
    model_copy : bool
        Whether ``refine`` converts a copy of the model (``dtype=`` or a wider
        ``product_dtype``).
    cache : bool
        Whether the operator keeps every row block's VJP (and linearization) between
        products (``Products.cache``). Without, nothing is kept (no ``"cache"`` part, no
        linearization): each product recomputes one row chunk, whose activations the
        ``"product"`` part already counts.

    Returns
    -------
    MemoryEstimate
    """
    parts_of = getattr(method, "memory_parts", None)
    if parts_of is None:
        raise TypeError(f"method: expected ls.Subspace or ls.Krylov, got {type(method).__name__}")
    pdt = product_dtype or dtype
    z = sizes_of(
        m=m, n=n, rows=rows, act_row=act_row, dtype=dtype, product_dtype=pdt, batch=batch,
        chunk=chunk, linearize=linearize, vmap=vmap, self_check=self_check,
        model_copy=model_copy, cache=cache,
    )  # fmt: skip
    act = z.act_row * z.s / torch.empty((), dtype=dtype).element_size()
    # a cached torch.func VJP holds about 4x the tensors autograd saves in a plain forward
    # pass, the linearization as much again (measured, tests/test_memory.py)
    parts = {
        "model": z.m * z.s if (model_copy or pdt != dtype) else 0,
        "cache": z.rows * act * (8 if z.linearize else 4) if z.cache else 0,
        "residual": 4 * z.n * z.s,
    }
    parts.update(parts_of(z))
    if self_check:
        parts["check"] = max(0, 2 * z.per_col_act - parts.get("product", 0))
    sizes = dict(
        m=z.m, n=z.n, rows=z.rows, act_row=z.act_row, dtype=str(pdt), batch=batch, chunk=chunk,
        linearize=z.linearize, vmap=vmap, cache=z.cache,
    )  # fmt: skip
    return MemoryEstimate(parts={k: int(v) for k, v in parts.items()}, sizes=sizes)
