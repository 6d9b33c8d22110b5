"""Small shared utilities: progress bars, peak-memory measurement, timing."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import torch

__all__ = ["progress", "PeakMemory", "timed", "resolve_device"]


class _NullBar:
    """Stands in for a tqdm bar when progress is off."""

    def __init__(self, iterable=None, total=None):
        self._it = iterable
        self.n = 0
        self.total = total

    def __iter__(self):
        return iter(self._it if self._it is not None else ())

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def progress(iterable=None, *, total=None, desc=None, disable=None, leave=False, unit="it"):
    """A progress bar that is quiet unless stderr is a terminal (or ``disable=False``).

    Uses tqdm when it is installed (the ``progress`` extra) and a silent stand-in otherwise.
    ``disable=None`` means: show the bar only when stderr is a TTY and the environment
    variable ``LSR_SCALE_NO_PROGRESS`` is unset.
    """
    if disable is None:
        disable = not sys.stderr.isatty() or bool(os.environ.get("LSR_SCALE_NO_PROGRESS"))
    if disable:
        return _NullBar(iterable, total)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NullBar(iterable, total)
    return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, dynamic_ncols=True)


def _read_vmhwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_vmrss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _reset_vmhwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Measure peak memory over a block of code.

    On CUDA devices this is ``torch.cuda.max_memory_allocated`` (tensor memory, reset on
    entry). On the CPU it is the process's peak resident set size (``VmHWM``), reset on entry
    through ``/proc/self/clear_refs`` where Linux allows it; ``kind`` says which was measured.
    ``increment_bytes`` is the peak minus what was in use on entry (what the block added).

    >>> with PeakMemory("cpu") as pm:
    ...     _ = torch.zeros(1000)
    >>> pm.peak_bytes > 0
    True
    """

    def __init__(self, device="cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.start_bytes = 0
        self.kind = ""

    @property
    def increment_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_peak_rss" if _reset_vmhwm() else "cpu_peak_rss_since_start"
            self.start_bytes = _read_vmrss()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = int(_read_vmhwm() or 0)
        return False


@contextmanager
def timed(store: dict, key: str, device=None):
    """Add the wall time of the block (synchronizing CUDA first) to ``store[key]``."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if dev is not None and dev.type == "cuda":
            torch.cuda.synchronize(dev)
        store[key] = store.get(key, 0.0) + time.perf_counter() - t0


def resolve_device(device) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ValueError(
                f"device: expected an available device, got {device!r} ({count} CUDA GPUs)"
            )
    return dev
