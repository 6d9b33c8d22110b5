"""Stack weighted residual blocks (PDE, boundary, initial ...) into one residual function."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["ResidualBlock", "stack_residuals"]


@dataclass(frozen=True)
class ResidualBlock:
    """One block of a composite physics-informed residual.

    Parameters
    ----------
    fn : callable
        ``fn(params: dict[str, Tensor]) -> Tensor``: the block's raw residual (any shape; it
        is flattened), e.g. ``-laplacian(u) - f`` at the interior points.
    weight : float
        The loss weight ``lambda_i`` of the block (default 1).
    name : str
        A label, used by :func:`stack_residuals`'s ``parts``.
    """

    fn: Callable[[dict], torch.Tensor]
    weight: float = 1.0
    name: str = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn: expected a callable, got {type(self.fn).__name__}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"weight: expected a finite non-negative number, got {self.weight}")


def stack_residuals(blocks, *, parts: bool = False):
    """One residual function from several weighted blocks.

    Block ``i`` with ``N_i`` rows and weight ``lambda_i`` is scaled by
    ``sqrt(lambda_i * N_total / N_i)``, ``N_total = sum_i N_i``, and the blocks are
    concatenated. Then ``0.5 * ||f||^2 = 0.5 * N_total * sum_i lambda_i * mean(r_i^2)``: the
    usual weighted mean-squared PINN loss, up to the constant ``N_total``, so the LSR
    least-squares problem and the training loss have the same minimizers.

    Parameters
    ----------
    blocks : sequence of ResidualBlock or of (fn, weight) pairs, or a mapping
        ``name -> ResidualBlock | fn | (fn, weight)``.
    parts : bool
        If True, also return a function ``split(f) -> dict[name, Tensor]`` that cuts a
        stacked vector back into its (unscaled) blocks.

    Returns
    -------
    residual_fn : callable
        ``residual_fn(params) -> Tensor`` of shape ``(N_total,)``; usable as
        ``lsr_scale.refine(model, residual_fn=...)`` or ``JacobianOperator(residual_fn, params)``.

    Examples
    --------
    >>> import torch
    >>> fn = stack_residuals([(lambda p: p["a"] * torch.ones(3), 1.0),
    ...                       (lambda p: p["a"] * torch.ones(1), 4.0)])
    >>> fn({"a": torch.tensor(1.0)})
    tensor([1.1547, 1.1547, 1.1547, 4.0000])
    """
    items = list(blocks.items()) if isinstance(blocks, Mapping) else list(enumerate(blocks))
    if not items:
        raise ValueError("blocks: expected at least one residual block, got none")
    norm: list[ResidualBlock] = []
    for key, b in items:
        if isinstance(b, ResidualBlock):
            blk = b if b.name else ResidualBlock(b.fn, b.weight, str(key))
        elif callable(b):
            blk = ResidualBlock(b, 1.0, str(key))
        elif isinstance(b, tuple) and len(b) == 2:
            blk = ResidualBlock(b[0], float(b[1]), str(key))
        else:
            raise TypeError(
                f"blocks[{key!r}]: expected a ResidualBlock, a callable or a (fn, weight) pair, "
                f"got {type(b).__name__}"
            )
        norm.append(blk)

    sizes: dict[str, int] = {}

    def residual_fn(params):
        rs = [blk.fn(params).reshape(-1) for blk in norm]
        n = [r.shape[0] for r in rs]
        total = sum(n)
        out = []
        for blk, r, ni in zip(norm, rs, n):
            sizes[blk.name] = ni
            out.append(r * math.sqrt(blk.weight * total / max(ni, 1)))
        return torch.cat(out)

    residual_fn.blocks = tuple(norm)
    if not parts:
        return residual_fn

    def split(f: torch.Tensor) -> dict[str, torch.Tensor]:
        if not sizes:
            raise RuntimeError("split: call residual_fn once before splitting its output")
        total = sum(sizes.values())
        out, start = {}, 0
        for blk in norm:
            ni = sizes[blk.name]
            scale = math.sqrt(blk.weight * total / max(ni, 1))
            out[blk.name] = f[start : start + ni] / scale if scale > 0 else f[start : start + ni]
            start += ni
        return out

    return residual_fn, split
