"""Loading and launching the CUDA kernels: CuPy, the ``.cu`` sources, compiled modules, streams.

Everything cached by the CUDA path (the CuPy import, compiled modules and functions, stream
wrappers, SM counts, the warn-once keys and the sparse-sign CSR forms) lives in one
:class:`Cache`, :data:`CACHE`, behind one lock. This module knows no entry-point names: callers
pass :class:`lsr_scale.cuda._registry.Entry` values, ``(source, name)`` pairs, from the registry.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "KERNEL_DIR_ENV",
    "Cache",
    "CACHE",
    "cupy",
    "cupy_error",
    "kernel_dir",
    "module",
    "function",
    "launch",
    "index_of",
    "sm_count",
    "i64",
    "scalar",
    "buffer",
    "finish",
]

KERNEL_DIR_ENV = "LSR_SCALE_KERNEL_DIR"
_PROBE_FILE = "fwht.cu"  # a source every kernel folder holds: marks the folder
_NP_SCALAR = {torch.float32: np.float32, torch.float64: np.float64}
_MISSING = object()


class Cache:
    """All cached state of the CUDA path, behind one re-entrant lock.

    Values are only ever added or replaced whole, under :attr:`lock`; a hit is read without the
    lock (a single ``dict.get``, atomic in CPython), so a hot launch path costs no lock
    round-trip. A miss builds its value under the lock, so two threads never build (compile)
    the same thing twice; the lock is re-entrant because building a function loads its module.

    Keys are tuples whose first element names the kind of state: ``("cupy",)``,
    ``("module", source, device)``, ``("function", source, name, device)``,
    ``("stream", device, pointer)``, ``("sms", device)``, ``("warned", ...)`` and
    ``("lru", space)`` (a bounded, least-recently-used table).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Return the value cached under ``key``, or ``default`` (no lock taken)."""
        return self._items.get(key, default)

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """Return the value under ``key``, building it with ``make()`` under the lock on a miss.

        If ``make`` raises, nothing is cached and the exception propagates.
        """
        value = self._items.get(key, _MISSING)
        if value is not _MISSING:
            return value
        with self.lock:
            value = self._items.get(key, _MISSING)
            if value is _MISSING:
                value = make()
                self._items[key] = value
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Cache ``value`` under ``key`` (replacing any previous value)."""
        with self.lock:
            self._items[key] = value

    def first(self, key: Hashable) -> bool:
        """Return ``True`` the first time ``key`` is seen, then ``False`` (warn-once)."""
        with self.lock:
            if key in self._items:
                return False
            self._items[key] = True
            return True

    def lru_get(self, space: str, key: Hashable) -> Any:
        """Return the entry ``key`` of the bounded table ``space`` (marking it recent), or None."""
        with self.lock:
            table = self._items.get(("lru", space))
            if table is None or key not in table:
                return None
            table.move_to_end(key)
            return table[key]

    def lru_put(self, space: str, key: Hashable, value: Any, maxsize: int) -> None:
        """Store ``value`` in table ``space``, dropping the oldest entries beyond ``maxsize``."""
        with self.lock:
            table = self._items.setdefault(("lru", space), OrderedDict())
            table[key] = value
            table.move_to_end(key)
            while len(table) > maxsize:
                table.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the next call re-imports CuPy and recompiles)."""
        with self.lock:
            self._items.clear()


CACHE = Cache()


# ---------------------------------------------------------------------------------------------
# CuPy and the sources
# ---------------------------------------------------------------------------------------------


def _import_cupy() -> tuple[Any, str | None]:
    # CuPy is an optional, heavy dependency (its import initialises CUDA): it is imported here,
    # on the first kernel call with a CUDA tensor or by kernel_status()/show_config(), and never
    # when lsr_scale is imported.
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"cupy not available ({type(exc).__name__}: {exc})"
    return cupy, None


def cupy():
    """Import CuPy on first use (once per process).

    Returns
    -------
    module or None
        The ``cupy`` module, or ``None`` when it cannot be imported (reason in
        :func:`cupy_error`).
    """
    return CACHE.get_or_make(("cupy",), _import_cupy)[0]


def cupy_error() -> str | None:
    """Why CuPy is unavailable, or ``None`` if it imported or was not tried yet."""
    state = CACHE.get(("cupy",))
    return None if state is None else state[1]


def kernel_dir() -> Path | None:
    """The folder holding the ``.cu`` sources, or ``None`` when none is found.

    Looks in ``$LSR_SCALE_KERNEL_DIR``, then ``lsr_scale/kernels`` (the wheel's data package),
    then ``<repo>/kernels`` (a source checkout).

    Returns
    -------
    pathlib.Path or None
    """
    package = Path(__file__).resolve().parent.parent  # lsr_scale/
    candidates = []
    if os.environ.get(KERNEL_DIR_ENV):
        candidates.append(Path(os.environ[KERNEL_DIR_ENV]))
    candidates += [package / "kernels", package.parent / "kernels"]
    for c in candidates:
        if (c / _PROBE_FILE).is_file():
            return c
    return None


def _compile(source: str, device_index: int, probe: str):
    cp = cupy()
    try:
        kdir = kernel_dir()
        if kdir is None:
            raise FileNotFoundError(
                f"expected the kernel sources in lsr_scale/kernels or <repo>/kernels, got "
                f"neither (set {KERNEL_DIR_ENV})"
            )
        code = (kdir / source).read_text()
        with cp.cuda.Device(device_index):
            mod = cp.RawModule(code=code, options=("--std=c++14",))
            mod.get_function(probe)  # forces the compile now, so failures surface here
    except Exception as exc:
        return exc
    return mod


def module(source: str, device_index: int, probe: str):
    """Compile ``source`` for one device, once, and return the ``cupy.RawModule``.

    Parameters
    ----------
    source : str
        File name in :func:`kernel_dir`, e.g. ``"fwht.cu"``.
    device_index : int
        CUDA device to compile for.
    probe : str
        An entry point of ``source``, fetched right away to force the compile.

    Returns
    -------
    cupy.RawModule or Exception
        The module, or the exception that reading or compiling the source raised (cached too,
        so a failing source is tried once per process).
    """
    return CACHE.get_or_make(
        ("module", source, device_index), lambda: _compile(source, device_index, probe)
    )


def function(entry: tuple[str, str], device_index: int):
    """Return the compiled ``cupy.RawKernel`` for ``entry`` (a ``(source, name)`` pair)."""
    source, name = entry

    def make():
        mod = module(source, device_index, name)
        if isinstance(mod, Exception):
            raise mod
        return mod.get_function(name)

    return CACHE.get_or_make(("function", source, name, device_index), make)


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------


def index_of(t: torch.Tensor) -> int:
    """The CUDA device index of ``t`` (the current device for an unindexed ``cuda`` device)."""
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def sm_count(device_index: int) -> int:
    """Number of streaming multiprocessors of a device (cached)."""
    return CACHE.get_or_make(
        ("sms", device_index),
        lambda: torch.cuda.get_device_properties(device_index).multi_processor_count,
    )


def _stream(cp, device_index: int):
    """CuPy wrapper of torch's current stream on ``device_index`` (so launches stay ordered)."""
    ptr = torch.cuda.current_stream(device_index).cuda_stream
    return CACHE.get_or_make(
        ("stream", device_index, ptr),
        lambda: cp.cuda.Stream.null if ptr == 0 else cp.cuda.ExternalStream(ptr, device_index),
    )


def launch(entry, device_index, grid, block, args, shared_mem=0, raw=False) -> None:
    """Launch a registry entry point on torch's current stream.

    torch tensors in ``args`` are exchanged zero-copy through DLPack (bf16/fp16 as int16 views),
    inside the stream context so the DLPack handshake sees the same stream (no extra sync).

    Parameters
    ----------
    entry : tuple of (str, str)
        ``(source, name)``, from :func:`lsr_scale.cuda._registry.entry`.
    device_index : int
        Device to launch on.
    grid, block : tuple of int
        Launch configuration.
    args : tuple
        Kernel arguments: tensors, numpy scalars (:func:`i64`, :func:`scalar`) or ints.
    shared_mem : int, optional
        Dynamic shared memory in bytes.
    raw : bool, optional
        Pass tensors as device pointers instead of through DLPack (the fused LSMR update,
        where seven DLPack handshakes would cost more than the kernel); the caller guarantees
        they are contiguous, on ``device_index``, and of the dtype the kernel expects.
    """
    cp = cupy()
    fn = function(entry, device_index)
    with cp.cuda.Device(device_index), _stream(cp, device_index):
        conv = []
        for a in args:
            if isinstance(a, torch.Tensor):
                if raw:
                    conv.append(a.data_ptr())
                else:
                    t = a.detach()
                    if t.dtype in (torch.bfloat16, torch.float16):
                        t = t.view(torch.int16)
                    conv.append(cp.from_dlpack(t))
            else:
                conv.append(a)
        fn(
            tuple(int(g) for g in grid),
            tuple(int(b) for b in block),
            tuple(conv),
            shared_mem=int(shared_mem),
        )


def i64(x) -> np.int64:
    """A ``long long`` kernel argument."""
    return np.int64(x)


def scalar(dtype: torch.dtype, x) -> np.generic:
    """A ``float``/``double`` kernel argument matching the working ``dtype``."""
    return _NP_SCALAR[dtype](x)


def buffer(out, shape, like: torch.Tensor) -> torch.Tensor:
    """A contiguous buffer of ``shape`` for a kernel to write: ``out`` (viewed) when usable."""
    if (
        out is not None
        and out.dtype == like.dtype
        and out.device == like.device
        and out.is_contiguous()
        and out.numel() == int(np.prod(shape))
    ):
        return out.view(shape)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def finish(res: torch.Tensor, out) -> torch.Tensor:
    """Return ``res``, or copy it into ``out`` (unless it already is ``out``'s memory)."""
    if out is None:
        return res
    if res.data_ptr() != out.data_ptr() or res.shape != out.shape:
        out.copy_(res.reshape(out.shape))
    return out
