"""The on/off switch of the CUDA path: an environment variable and an in-process context manager.

Every dispatch decision asks :func:`disabled_reason` (through :func:`enabled` or
:func:`lsr_scale.cuda._registry.status`), the one place that reads both the environment variable
and the context manager's state. The variable is read at each decision, so setting it in a
running process takes effect at once, as it always has.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DISABLE_ENV", "disabled", "enabled", "disabled_reason"]

DISABLE_ENV = "LSR_SCALE_DISABLE_CUDA_KERNELS"
_TRUTHY = ("1", "true", "yes", "on")

# Depth of open ``disabled()`` blocks in this process, across all threads.
_depth = 0
_depth_lock = threading.Lock()


def disabled_reason() -> str | None:
    """Why the CUDA path is switched off, or ``None`` when it is switched on.

    Returns
    -------
    str or None
        ``"LSR_SCALE_DISABLE_CUDA_KERNELS=1"`` when the environment variable is set to ``1``,
        ``true``, ``yes`` or ``on`` (any case); ``"lsr_scale.cuda.disabled()"`` inside a
        :func:`disabled` block; otherwise ``None``.
    """
    if os.environ.get(DISABLE_ENV, "").strip().lower() in _TRUTHY:
        return f"{DISABLE_ENV}=1"
    if _depth > 0:
        return "lsr_scale.cuda.disabled()"
    return None


def enabled() -> bool:
    """Whether the CUDA path is switched on (neither the variable nor :func:`disabled` is active).

    Being switched on does not mean a kernel will run: CUDA tensors, CuPy and a successful
    compile are needed too. :func:`lsr_scale.cuda.kernel_status` reports the path each kernel
    takes.

    Returns
    -------
    bool
        ``True`` unless ``LSR_SCALE_DISABLE_CUDA_KERNELS`` is set or a :func:`disabled` block
        is open.

    Examples
    --------
    >>> from lsr_scale import cuda
    >>> with cuda.disabled():
    ...     cuda.enabled()
    False
    """
    return disabled_reason() is None


@contextmanager
def disabled() -> Iterator[None]:
    """Switch the CUDA path off for the duration of a ``with`` block (or a decorated function).

    Every kernel takes its torch path inside the block, and CuPy is not imported. The switch
    is process-wide: while any thread is inside a ``disabled()`` block, all threads take the
    torch path. Blocks nest (a counter under a lock), and leaving a block, also through an
    exception, restores the previous state.

    Yields
    ------
    None

    Examples
    --------
    >>> import torch
    >>> from lsr_scale import cuda
    >>> with cuda.disabled():
    ...     y = cuda.fwht_(torch.ones(4))
    >>> y.tolist()
    [4.0, 0.0, 0.0, 0.0]
    """
    global _depth
    with _depth_lock:
        _depth += 1
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
