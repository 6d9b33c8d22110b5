"""The package's one randomness rule, and the Gaussian draws that follow it.

A ``generator`` argument is the only source of randomness: every random draw (test
matrices, sketches, probe vectors) comes from it, in a fixed order, so the same seeded
generator reproduces a result exactly. ``None`` means torch's global RNG
(``torch.default_generator``, the one ``torch.manual_seed`` seeds), as for ``torch.randn``.
Nothing seeds itself. Draws are made on the generator's device (the CPU for ``None``) and
then moved to where they are used, so a CPU generator gives the same numbers for a CPU and a
CUDA operator. See "Randomness" in ``docs/guide.md``.
"""

from __future__ import annotations

import torch

from .._checks import check_generator

__all__ = ["resolve_generator", "gaussian"]


def resolve_generator(generator) -> torch.Generator:
    """``generator`` itself, or torch's global RNG (``torch.default_generator``) for None.

    Raises ``TypeError`` for anything else.
    """
    generator = check_generator(generator)
    return torch.default_generator if generator is None else generator


def gaussian(rows: int, cols: int, generator, *, dtype, device, draw_dtype=None) -> torch.Tensor:
    """A ``(rows, cols)`` standard normal matrix with ``dtype`` on ``device``.

    Drawn from ``generator`` (see :func:`resolve_generator`) on its device in ``draw_dtype``
    (default ``dtype``), then converted. Drawing in float64 makes the numbers independent
    of ``dtype`` (up to rounding), which is what the Nystrom build does.
    """
    gen = resolve_generator(generator)
    G = torch.randn(rows, cols, generator=gen, device=gen.device, dtype=draw_dtype or dtype)
    return G.to(dtype=dtype, device=device)
