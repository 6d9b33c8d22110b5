"""Memory model of a refinement: peak bytes before anything is allocated, and chunk sizes.

:func:`estimate` gives the peak bytes of ``refine`` as a sum of named parts, from the
sizes of the problem: parameters ``m``, residual rows ``n`` (data rows ``N`` times outputs),
preconditioner or subspace rank ``l``, product batch ``b``, row chunk and dtype. The
activations a Jacobian operator caches (one forward pass over all rows, twice with the
linearization) are measured from one forward pass of a few rows
(:func:`activation_bytes_per_row`). The formulas, their constants and how they compare
with measured peaks are in ``docs/scale.md``; ``tests/test_memory.py`` holds them to within
2x of measured peaks on the CPU.

:func:`preflight` is what :func:`lsr_scale.refine` calls before it linearizes: it refuses a
problem whose estimate at the smallest chunks exceeds the available memory, and otherwise
returns the :class:`~lsr_scale.refine.Products` with the product batch (and, when the
activations of one product over all rows would not fit, the row chunk) chosen from the free
memory (CPU: ``MemAvailable`` of ``/proc/meminfo``; CUDA: ``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

__all__ = [
    "MemoryEstimate",
    "activation_bytes_per_row",
    "available_bytes",
    "choose_block",
    "estimate",
    "preflight",
]

_MIB = 1024**2
# A product batch on the CPU (loop batching) costs the same per column at any size, so it
# only has to be large enough to amortize Python overhead; on a GPU (vmap) wider is faster.
_LOOP_TRANSIENT_CAP = 256 * _MIB
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
        inner = ", ".join(f"{k} {_gb(v)}" for k, v in items if v >= 1e6)
        return f"{_gb(self.total)} ({inner})"


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


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


def activation_bytes_per_row(model: torch.nn.Module, inputs, rows: int = 8) -> float:
    """Bytes autograd saves per data row in one forward pass (the cached VJP's share).

    Runs the model once on the first ``rows`` rows with gradients enabled and counts the
    tensors saved for the backward pass (``torch.autograd.graph.saved_tensors_hooks``),
    parameters excluded.
    """
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    rows = max(1, min(int(rows), int(inputs[0].shape[0])))
    # fresh leaves for the parameters: the model's own tensors are not touched
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    ptrs = {v.data_ptr() for v in params.values()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in ptrs:
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    small = tuple(x[:rows] for x in inputs)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = torch.func.functional_call(model, params, small)
    return (sum(seen.values()) + out.numel() * out.element_size()) / rows


def choose_block(m: int, dtype, device, *, limit: int = 64, free: int | None = None) -> int:
    """Columns per batch of ``m``-sized products: at most ``limit``, and small enough that the
    batch (about ``2 m b`` numbers while its columns are stacked) takes at most an eighth of
    the free memory (on the CPU also at most 256 MiB: there a batch is a loop of single
    products, no faster when wider)."""
    free = available_bytes(device) if free is None else free
    budget = free // _BATCH_SHARE
    if torch.device(device).type != "cuda":
        budget = min(budget, _LOOP_TRANSIENT_CAP)
    per_col = 2 * m * torch.empty((), dtype=dtype).element_size()
    return int(max(1, min(limit, budget // max(per_col, 1))))


# ---------------------------------------------------------------------- the model
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
) -> MemoryEstimate:
    """Peak bytes of ``refine(model, data, method=method)`` added to what exists before.

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
        The model's dtype.
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

    Returns
    -------
    MemoryEstimate
    """
    from ._krylov import Krylov
    from ._subspace import Subspace, default_rank

    rows = n if rows is None else rows
    pdt = product_dtype or dtype
    s = torch.empty((), dtype=pdt).element_size()
    widen = s / torch.empty((), dtype=dtype).element_size()
    act = act_row * widen
    chunk_rows = rows if chunk is None else min(chunk, rows)
    # Measured on the CPU (tests/test_memory.py): a cached torch.func VJP holds about 4x the
    # tensors autograd saves in a plain forward pass, the linearization as much again, and
    # one column's JVP or VJP about 4x those of its row chunk.
    per_col_act = 4 * chunk_rows * act
    parts = {
        "model": m * s if (model_copy or pdt != dtype) else 0,
        "cache": rows * act * (8 if linearize else 4),
        "residual": 4 * n * s,
    }

    def product(k):  # one batch of k columns of products: its outputs and its activations
        width = min(k, batch) if batch else k
        return 2 * m * width * s + per_col_act * (width if vmap else 1)

    if isinstance(method, Krylov):
        solver_s = 8 if method.precision in ("auto", "mixed", "float64") else s
        space = method.resolved_space((n, m))
        rank = _krylov_rank(method, n, m, space)
        if space == "sample":
            b = min(batch, choose_block(m, pdt, "cpu", limit=batch))
            parts["solver"] = 10 * n * solver_s + 3 * m * s
            parts["basis"] = 4 * n * rank * 8
            parts["product"] = product(b)
        else:
            parts["solver"] = 8 * m * solver_s
            k = rank + 10 if rank else 0
            # Bt = A^T Omega-basis (m x k) and its SVD factor V (m x k); the Gaussian test
            # matrix is drawn (m x k, float64) and freed before Bt exists
            parts["build"] = max(2 * m * k * s, m * k * 8) if rank else 0
            parts["product"] = product(k or 1)
    elif isinstance(method, Subspace):
        r = method.rank if isinstance(method.rank, int) else default_rank(n, m)
        if method.rank == "auto" and method.rank_candidates:
            r = max(method.rank_candidates)
        if method.fraction is not None:
            m_eff = int(math.ceil(m * method.fraction))
        else:
            m_eff = m
        if method.range_finder == "streamed":
            bs = torch.empty((), dtype=method.basis_dtype or pdt).element_size()
            parts["basis"] = m_eff * r * bs + 3 * r * r * 8
            parts["product"] = product(batch)
        else:
            k = min(r + method.oversample, n, m_eff)
            parts["basis"] = 3 * m_eff * k * s
            parts["product"] = product(k)
            dense = n * r * s
            if method.reduced == "dense" or (
                method.reduced == "auto" and dense <= method.max_dense_bytes
            ):
                parts["reduced"] = 3 * dense
            else:
                parts["reduced"] = 8 * r * s + 4 * n * s
    else:
        raise TypeError(f"method: expected ls.Subspace or ls.Krylov, got {type(method).__name__}")
    if self_check:
        parts["check"] = max(0, 2 * per_col_act - parts.get("product", 0))
    sizes = dict(
        m=m, n=n, rows=rows, act_row=act_row, dtype=str(pdt), batch=batch, chunk=chunk,
        linearize=linearize, vmap=vmap,
    )  # fmt: skip
    return MemoryEstimate(parts={k: int(v) for k, v in parts.items()}, sizes=sizes)


def _krylov_rank(method, n, m, space) -> int:
    from ..precond import Auto, Nystrom

    spec = method.preconditioner
    if spec is None:
        return 0
    if isinstance(spec, Auto):
        spec = spec.nystrom if space == "sample" else spec.choose((n, m))
    if not isinstance(spec, Nystrom):
        return 0  # sketch (s x m with s ~ 4 m tall only) and Jacobi: small next to the rest
    return method.precond_rank((n, m), spec)


# ---------------------------------------------------------------------- before refine runs
def preflight(method, model, inputs, targets, products, *, product_dtype=None, available=None):
    """Estimate, refuse what cannot fit, and choose the product batch and row chunk.

    Called by :func:`lsr_scale.refine` for ``data=`` refinements before it linearizes.

    Returns
    -------
    (Products, MemoryEstimate)
        ``products`` with ``batch_size`` lowered to what fits (never raised) and, when the
        cache and one product over all rows do not fit, a ``chunk_size``; the estimate at
        those settings.

    Raises
    ------
    MemoryError
        When even one column per batch and the smallest row chunk need more than the
        available memory; the message names the estimate, its largest parts and the
        available bytes.
    """
    p0 = next(iter(model.parameters()))
    dtype = p0.dtype
    device = p0.device
    m = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = int(inputs[0].shape[0])
    n = int(targets.numel())
    act = activation_bytes_per_row(model, inputs)
    vmap = products.batching == "vmap" or (products.batching == "auto" and device.type == "cuda")
    free = available_bytes(device) if available is None else int(available)
    kw = dict(
        m=m, n=n, rows=rows, act_row=act, dtype=dtype, product_dtype=product_dtype or dtype,
        linearize=products.jvp != "double_vjp", vmap=vmap, self_check=products.self_check,
    )  # fmt: skip
    batch = products.batch_size or max(1, min(n, m))
    chunk = products.chunk_size
    est = estimate(method, batch=batch, chunk=chunk, **kw)
    if est.total <= free:
        return products, est
    # the smallest settings: one column per batch, rows in chunks of 1
    low = estimate(method, batch=1, chunk=1, **kw)
    if low.total > free:
        raise MemoryError(
            f"refine: expected the problem to fit in the available memory, got an estimated "
            f"peak of {low.describe()} at one column per product batch and one row per "
            f"chunk, with {_gb(free)} available (m={m:,} parameters, n={n:,} rows, "
            f"{method.name}); see docs/scale.md for what each part is and how to shrink it"
        )
    # lower the batch first, then the row chunk, until the estimate fits
    while batch > 1 and est.total > free:
        batch = max(1, batch // 2)
        est = estimate(method, batch=batch, chunk=chunk, **kw)
    chunk = rows if chunk is None else chunk
    while chunk > 1 and est.total > free:
        chunk = max(1, chunk // 2)
        est = estimate(method, batch=batch, chunk=chunk, **kw)
    new = dataclasses.replace(
        products, batch_size=batch, chunk_size=chunk if chunk < rows else products.chunk_size
    )
    return new, est
