"""Planning: the settings of a refinement that fit a memory budget, chosen before any work.

The layers, bottom up:

* :mod:`._memory` knows sizes and the parts every refinement has (model copy, activation
  cache, residual vectors, self-check); it knows no method.
* Each method reports its own parts (``memory_parts(sizes)``) and its levers, in order
  (``adapt(sizes, fits)``).
* This module puts them together: it measures the problem, estimates the peak, lowers the
  product batch (which changes no result), lets the method adapt its settings, then takes
  the rows in chunks and, when the cache of all rows' activations is what does not fit,
  recomputes each chunk in every product instead of caching it (slower, same result); if
  that is still too much, the method's levers are tried again at those row chunks.
  :func:`plan` returns that without allocating the problem; :func:`lsr_scale.refine` runs
  the same plan and warns once when a setting that changes the result was adapted
  (``info["adapted"]``).

The budget defaults to half of the memory free on the device (:func:`default_budget`):
the memory model is within 2x of measured peaks (``tests/test_memory.py``), so a
refinement it underestimates by up to 2x still fits in what is free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ._memory import (
    MemoryEstimate,
    _gb,
    activation_bytes,
    activation_bytes_per_row,
    available_bytes,
    choose_block,
    estimate,
    sizes_of,
)
from ._methods import Products

__all__ = ["Plan", "default_budget", "plan_problem", "BUDGET_SHARE"]

#: Share of the free memory a refinement may plan to use by default.
BUDGET_SHARE = 0.5
#: Rows per chunk at which a method's levers are chosen when the cache has been dropped.
LEVER_CHUNK = 64
#: Share of the budget the estimate may fill. The rest is for what it does not count (the
#: allocator's rounding, small tensors, Python objects): on issue 17's digits CNN a plan that
#: filled 99.5% of a 62.5 MiB budget measured 63.2 MiB (glibc returning freed memory).
HEADROOM = 0.95


def default_budget(device=None, *, free: int | None = None) -> int:
    """Bytes a refinement may plan to use: :data:`BUDGET_SHARE` of the free memory.

    ``free`` overrides what is measured (e.g. ``80e9`` to plan for an 80 GB GPU from here).
    """
    free = available_bytes(device) if free is None else int(free)
    return int(BUDGET_SHARE * free)


@dataclass(frozen=True)
class Plan:
    """What :func:`lsr_scale.plan` (and :func:`lsr_scale.refine`) decided, before any work.

    Attributes
    ----------
    method : Subspace or Krylov
        The method with the settings that fit (the one given when nothing was adapted).
    products : Products
        How products are taken (the batch and row chunk lowered to fit, never raised).
    peak_bytes : int
        The estimated peak the refinement adds, at these settings.
    parts : dict of str to int
        The estimate by part (``docs/scale.md`` says what each is).
    budget : int
        The bytes it had to fit in.
    adapted : tuple of dict
        Each change of a setting that changes the result: ``setting``, ``from``, ``to``,
        ``reason``. Empty when the given settings fit.
    notes : tuple of str
        Everything decided, one line each (adaptations, product batches, the estimate).
    sizes : dict
        The sizes the estimate was made from (``m``, ``n``, rows, dtype, ...).
    """

    method: object
    products: Products
    peak_bytes: int
    parts: dict
    budget: int
    adapted: tuple = ()
    notes: tuple = ()
    sizes: dict = field(default_factory=dict)
    _estimate_args: dict = field(default_factory=dict, repr=False, compare=False)

    def estimate(self, method) -> MemoryEstimate:
        """The estimate of ``method`` (e.g. this plan's method at a larger rank) at this
        plan's sizes and product settings."""
        if not self._estimate_args:
            raise ValueError("Plan.estimate: this plan keeps no sizes to estimate from")
        return estimate(method, **self._estimate_args)

    def within_budget(self, method) -> bool:
        """Whether :meth:`estimate` of ``method`` is within :data:`HEADROOM` of the budget,
        as the plan's own estimate is."""
        return self.estimate(method).total <= int(HEADROOM * self.budget)

    @property
    def fits(self) -> bool:
        """Whether the estimate is within the budget."""
        return self.peak_bytes <= self.budget

    def describe(self) -> str:
        """A few lines for people: the method, the estimate and what was adapted."""
        est = MemoryEstimate(parts=self.parts)
        lines = [f"{self.method!r}", f"estimated peak {est.describe()}, budget {_gb(self.budget)}"]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def plan_problem(
    method,
    *,
    m: int,
    n: int,
    rows: int,
    act_row: float,
    dtype,
    product_dtype,
    device,
    products: Products,
    budget: int,
    model_copy: bool = False,
) -> Plan:
    """The plan for a problem of known sizes (what :func:`lsr_scale.plan` measures).

    Raises
    ------
    MemoryError
        When even one column per batch, one row per chunk and every lever of the method
        leave the estimate above the budget; the message names the estimate, its largest
        parts and the budget.
    """
    device = torch.device(device)
    given, budget = int(budget), int(HEADROOM * budget)  # plan within HEADROOM of it
    vmap = products.batching == "vmap" or (products.batching == "auto" and device.type == "cuda")
    base = dict(
        m=m, n=n, rows=rows, act_row=act_row, dtype=dtype, product_dtype=product_dtype,
        linearize=products.jvp != "double_vjp", vmap=vmap, self_check=products.self_check,
        model_copy=model_copy,
    )  # fmt: skip
    batch = products.batch_size or max(1, min(n, m))
    chunk = products.chunk_size
    cache = products.cache is not False

    def est(meth):
        return estimate(meth, batch=batch, chunk=chunk, cache=cache, **base)

    notes = []
    b0 = batch
    if not vmap:  # a loop of single products: a wider batch only costs memory
        batch = choose_block(m, product_dtype, device, limit=batch, free=budget)
    cur = est(method)
    while batch > 1 and cur.total > budget:  # 1. the product batch: changes no result
        batch = max(1, batch // 2)
        cur = est(method)
    if batch != b0:
        notes.append(f"product batch lowered to {batch} columns (was {b0})")
    adapted = []

    def describe(changes):
        return [f"{c['setting']}: {c['from']} -> {c['to']} ({c['reason']})" for c in changes]

    if cur.total > budget:  # 2. the method's own levers, in its documented order
        z = sizes_of(batch=batch, chunk=chunk, cache=cache, **base)
        method, adapted = method.adapt(z, lambda meth: est(meth).total <= budget)
        cur = est(method)
        notes += describe(adapted)
    chunk0 = chunk
    full = rows if chunk0 is None else chunk0  # the chunk every halving starts from

    def largest_chunk():
        """Halve the row chunk from ``full`` until ``method`` fits (or 1); its estimate."""
        nonlocal chunk
        chunk = full
        got = est(method)
        while chunk > 1 and got.total > budget:
            chunk = max(1, chunk // 2)
            got = est(method)
        return got

    chunk = full
    if cur.total > budget:  # 3. rows in chunks: slower, same result
        cur = largest_chunk()
    if cur.total > budget and products.cache is None:
        # 4. the cached activations of every row do not fit (chunks do not shrink them):
        # keep none, and recompute one row chunk per product (slower still, same result)
        cached = cur.parts.get("cache", 0)  # the chunk does not change this part
        cache = False
        cur = largest_chunk()
        notes.append(
            f"no cache of all rows' activations (it needs {_gb(cached)}): every product "
            "recomputes its row chunk's forward pass"
        )
    if cur.total > budget:
        # 5. the method's levers again, now that the rows' part can be small (at step 2 the
        # cache alone could be over the budget, so no setting of theirs fitted). They are
        # chosen at row chunks of LEVER_CHUNK rows (fewer make every product slow), or of 1
        # row when nothing fits at that size; then the largest row chunk that fits
        for chunk in dict.fromkeys((min(rows, full, LEVER_CHUNK), 1)):
            z = sizes_of(batch=batch, chunk=chunk, cache=cache, **base)
            cand, more = method.adapt(z, lambda meth: est(meth).total <= budget)
            if est(cand).total <= budget:
                break
        method, adapted = cand, [*adapted, *more]
        notes += describe(more)
        cur = largest_chunk()
    if chunk < rows and chunk != chunk0:
        notes.append(f"rows taken in chunks of {chunk} (was {chunk0 or 'all'})")
    else:
        chunk = chunk0
    if cur.total > budget:
        raise MemoryError(
            f"refine: expected the problem to fit in the memory budget, got an estimated peak "
            f"of {cur.describe()} with a budget of {_gb(given)} ({HEADROOM:.0%} of it for the "
            f"estimate: {_gb(budget)}) after lowering the product "
            f"batch to {batch} and every setting {method.name} can adapt (m={m:,} parameters, "
            f"n={n:,} residual rows); pass memory_budget= if more is free, or see "
            "docs/scale.md for what each part is and how to shrink it"
        )
    notes.append(
        f"estimated peak {cur.describe()} within {HEADROOM:.0%} of a budget of {_gb(given)}"
    )
    at_plan = dict(base, batch=batch, chunk=chunk, cache=cache)  # the settings planned
    new_products = dataclasses.replace(
        products, batch_size=batch if products.batch_size else None, chunk_size=chunk,
        cache=cache,
    )  # fmt: skip
    plan = Plan(
        method=method,
        products=new_products,
        peak_bytes=cur.total,
        parts=cur.parts,
        budget=given,
        adapted=tuple(adapted),
        notes=tuple(notes),
        sizes={**cur.sizes, "device": str(device)},
        _estimate_args=at_plan,
    )
    # what the method may decide while it runs, judged by the test the run itself asks
    later = method.plan_notes(sizes_of(**at_plan), plan.within_budget)
    return dataclasses.replace(plan, notes=(*plan.notes, *later)) if later else plan


def measure(model, inputs=None, *, residual_fn=None, theta=None) -> tuple[int, float]:
    """``(rows, act_row)`` of a ``data=`` or ``residual_fn`` problem: activation bytes per
    row from one forward pass of a few rows, or of one whole residual evaluation (then
    ``rows`` is 1)."""
    if residual_fn is not None:
        try:
            return 1, activation_bytes(residual_fn, theta)
        except RuntimeError as err:  # torch.func transforms inside refuse saved-tensor hooks
            if "saved tensor hooks" not in str(err):
                raise
            return 1, float("nan")
    return int(inputs[0].shape[0]), activation_bytes_per_row(model, inputs)
