"""The kernel registry: entry-point names, availability, and the warn-once fallback.

:data:`ENTRIES` is the single source of the ``extern "C"`` entry-point names, by source file,
operation and dtype suffix; launch sites ask :func:`entry` for the name to launch and never
spell or build one themselves. ``tests/test_kernels.py`` checks that :data:`ENTRIES` and the
``.cu`` files define the same names.

:data:`KERNELS` names the kernels as :func:`kernel_status` reports them, each with its source
file. :func:`status` and :func:`use_cuda` decide, per call, whether the CUDA path runs.
"""

from __future__ import annotations

import sys
import warnings
from typing import NamedTuple

import torch

from . import _loader, _switch

__all__ = [
    "Entry",
    "ENTRIES",
    "KERNELS",
    "WORK_DTYPES",
    "LOWRANK_STORES",
    "entry",
    "names",
    "status",
    "use_cuda",
    "use_cuda_device",
    "kernel_status",
    "show_config",
]


class Entry(NamedTuple):
    """One launchable entry point: its source file in ``kernels/`` and its ``extern "C"`` name."""

    source: str
    name: str


# source file -> operation -> dtype suffix -> entry name. Suffixes name the working dtype
# ("f32", "f64"); the low-rank passes also name the basis storage ("bf16", "f16", or the
# working dtype), with "x2" when two 16-bit elements are read per 32-bit load.
ENTRIES: dict[str, dict[str, dict[str, str]]] = {
    "fwht.cu": {
        "fwht_pass": {"f32": "fwht_pass_f32", "f64": "fwht_pass_f64"},
    },
    "sparse_sign.cu": {
        "sparse_sign": {"f32": "sparse_sign_f32", "f64": "sparse_sign_f64"},
        "sparse_sign_t": {"f32": "sparse_sign_t_f32", "f64": "sparse_sign_t_f64"},
    },
    "lowrank.cu": {
        "lowrank_zt": {
            "bf16_f32": "lowrank_zt_bf16_f32",
            "bf16x2_f32": "lowrank_zt_bf16x2_f32",
            "f16_f32": "lowrank_zt_f16_f32",
            "f16x2_f32": "lowrank_zt_f16x2_f32",
            "f32_f32": "lowrank_zt_f32_f32",
            "bf16_f64": "lowrank_zt_bf16_f64",
            "bf16x2_f64": "lowrank_zt_bf16x2_f64",
            "f16_f64": "lowrank_zt_f16_f64",
            "f16x2_f64": "lowrank_zt_f16x2_f64",
            "f64_f64": "lowrank_zt_f64_f64",
        },
        "lowrank_apply": {
            "bf16_f32": "lowrank_apply_bf16_f32",
            "bf16x2_f32": "lowrank_apply_bf16x2_f32",
            "f16_f32": "lowrank_apply_f16_f32",
            "f16x2_f32": "lowrank_apply_f16x2_f32",
            "f32_f32": "lowrank_apply_f32_f32",
            "bf16_f64": "lowrank_apply_bf16_f64",
            "bf16x2_f64": "lowrank_apply_bf16x2_f64",
            "f16_f64": "lowrank_apply_f16_f64",
            "f16x2_f64": "lowrank_apply_f16x2_f64",
            "f64_f64": "lowrank_apply_f64_f64",
        },
        "lowrank_reduce": {"f32": "lowrank_reduce_f32", "f64": "lowrank_reduce_f64"},
    },
    "lsmr_update.cu": {
        "lsmr_update": {"f32": "lsmr_update_f32", "f64": "lsmr_update_f64"},
        "lsmr_sqnorm_finish": {"f32": "lsmr_sqnorm_finish_f32", "f64": "lsmr_sqnorm_finish_f64"},
    },
}

# kernel (as kernel_status() reports it) -> source file
KERNELS: dict[str, str] = {
    "fwht": "fwht.cu",
    "sparse_sign": "sparse_sign.cu",
    "sparse_sign_t": "sparse_sign.cu",
    "lowrank": "lowrank.cu",
    "lsmr_update": "lsmr_update.cu",
}

# working dtypes the kernels compute in, and the 16-bit storage formats of the low-rank basis
WORK_DTYPES: dict[torch.dtype, str] = {torch.float32: "f32", torch.float64: "f64"}
LOWRANK_STORES: dict[torch.dtype, str] = {torch.bfloat16: "bf16", torch.float16: "f16"}

_OP_SOURCE = {op: source for source, ops in ENTRIES.items() for op in ops}


def names(source: str | None = None) -> set[str]:
    """All registered entry-point names, of one source file or of all.

    Parameters
    ----------
    source : str, optional
        A file in ``kernels/``, e.g. ``"lowrank.cu"``.

    Returns
    -------
    set of str
    """
    if source is not None and source not in ENTRIES:
        raise ValueError(f"names: expected a source in {sorted(ENTRIES)}, got {source!r}")
    sources = ENTRIES if source is None else {source: ENTRIES[source]}
    return {name for ops in sources.values() for by in ops.values() for name in by.values()}


def entry(
    op: str, dtype: torch.dtype, *, store: torch.dtype | None = None, paired: bool = False
) -> Entry:
    """The entry point that runs ``op`` in working dtype ``dtype``.

    Parameters
    ----------
    op : str
        An operation of :data:`ENTRIES`, e.g. ``"fwht_pass"`` or ``"lowrank_zt"``.
    dtype : torch.dtype
        Working dtype, ``torch.float32`` or ``torch.float64``.
    store : torch.dtype, optional
        Storage dtype of the low-rank basis (``lowrank_zt`` and ``lowrank_apply`` only):
        bfloat16, float16 or ``dtype``.
    paired : bool, optional
        Read a 16-bit ``store`` two elements per 32-bit load.

    Returns
    -------
    Entry
        ``(source, name)``, ready for :func:`lsr_scale.cuda._loader.launch`.

    Examples
    --------
    >>> import torch
    >>> entry("lowrank_zt", torch.float32, store=torch.bfloat16, paired=True).name
    'lowrank_zt_bf16x2_f32'
    """
    source = _OP_SOURCE.get(op)
    if source is None:
        raise ValueError(f"entry: expected an operation in {sorted(_OP_SOURCE)}, got {op!r}")
    work = WORK_DTYPES.get(dtype)
    if work is None:
        raise ValueError(f"entry: expected a dtype in {list(WORK_DTYPES)}, got {dtype}")
    if store is None:
        suffix = work
    else:
        tag = work if store == dtype else LOWRANK_STORES.get(store)
        if tag is None:
            raise ValueError(
                f"entry: expected a storage dtype in {[*LOWRANK_STORES, dtype]}, got {store}"
            )
        suffix = f"{tag}x2_{work}" if paired else f"{tag}_{work}"
    name = ENTRIES[source][op].get(suffix)
    if name is None:
        raise ValueError(
            f"entry: expected a variant of {op!r} in {sorted(ENTRIES[source][op])}, got {suffix!r}"
        )
    return Entry(source, name)


def _probe(source: str) -> str:
    """An entry point of ``source`` (its first), fetched to force a compile."""
    return next(iter(next(iter(ENTRIES[source].values())).values()))


# ---------------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------------


def status(kernel: str, device: torch.device | None = None) -> tuple[bool, str]:
    """Whether ``kernel`` would run its CUDA path on ``device``, and if not, why.

    Parameters
    ----------
    kernel : str
        A key of :data:`KERNELS`.
    device : torch.device, optional
        Defaults to the current CUDA device.

    Returns
    -------
    tuple of (bool, str)
        ``(True, "cuda")``, or ``(False, reason)``. May import CuPy and compile the kernel's
        source (once per process and device).
    """
    source = KERNELS.get(kernel)
    if source is None:
        raise ValueError(f"status: expected a kernel in {sorted(KERNELS)}, got {kernel!r}")
    reason = _switch.disabled_reason()
    if reason is not None:
        return False, reason
    if device is None:
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return False, "CPU tensor"
    if _loader.cupy() is None:
        return False, _loader.cupy_error() or "cupy not available"
    index = device.index if device.index is not None else torch.cuda.current_device()
    mod = _loader.module(source, index, _probe(source))
    if isinstance(mod, Exception):
        msg = str(mod).strip().splitlines()
        return False, f"compile failed ({type(mod).__name__}: {msg[0] if msg else ''})"
    return True, "cuda"


def use_cuda(kernel: str, *tensors: torch.Tensor) -> bool:
    """Dispatch decision for one call: all ``tensors`` on a GPU and ``kernel`` available there.

    Warns once per process (``RuntimeWarning``) when CUDA tensors fall back to torch because
    CuPy is missing, and once per source file when it failed to compile.
    """
    if not tensors or any(t.device.type != "cuda" for t in tensors):
        return False
    return use_cuda_device(kernel, tensors[0].device)


def use_cuda_device(kernel: str, device: torch.device) -> bool:
    """:func:`use_cuda` for a device rather than tensors."""
    if not _switch.enabled():
        return False
    ok, reason = status(kernel, device)
    if not ok:
        key = ("warned", "cupy") if _loader.cupy_error() else ("warned", "compile", KERNELS[kernel])
        if _loader.CACHE.first(key):
            warnings.warn(
                f"lsr_scale: CUDA kernel '{kernel}' unavailable, using the torch fallback: "
                f"{reason}. Install cupy (pip install 'lsr_scale[cuda]') or set "
                f"{_switch.DISABLE_ENV}=1 to silence.",
                RuntimeWarning,
                stacklevel=4,
            )
    return ok


def kernel_status(device: torch.device | str | None = None) -> dict[str, str]:
    """Which path each kernel takes for CUDA tensors: ``"cuda"`` or ``"torch (reason)"``.

    CPU tensors always take the torch path. This may import CuPy and compile the kernels (once
    per process).

    Parameters
    ----------
    device : torch.device or str, optional
        Defaults to the current CUDA device.

    Returns
    -------
    dict of str to str
        One entry per kernel of :data:`KERNELS`.

    Examples
    --------
    >>> from lsr_scale import cuda
    >>> with cuda.disabled():
    ...     cuda.kernel_status()["fwht"]
    'torch (lsr_scale.cuda.disabled())'
    """
    dev = torch.device(device) if device is not None else None
    out = {}
    for name in KERNELS:
        ok, reason = status(name, dev)
        out[name] = "cuda" if ok else f"torch ({reason})"
    return out


def show_config(file=None) -> str:
    """Print (and return) versions, the GPU, and which path each kernel takes.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).

    Returns
    -------
    str
        The printed report.

    Examples
    --------
    >>> import lsr_scale
    >>> report = lsr_scale.show_config()  # doctest: +SKIP
    lsr_scale 0.1.0
    torch 2.4.0
    ...
    kernels (CUDA tensors; CPU tensors always use torch):
      fwht           cuda
      ...
    """
    # The package root is always imported before any of its submodules: read its version
    # without importing it from here.
    version = getattr(sys.modules.get("lsr_scale"), "__version__", "unknown")
    lines = [f"lsr_scale {version}", f"torch {torch.__version__}"]
    lines.append(f"torch CUDA {torch.version.cuda or 'none (CPU build)'}")
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name} ({p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor})")
    else:
        lines.append("GPU: none")
    reason = _switch.disabled_reason()
    if reason is not None:
        lines.append(f"cupy: not loaded ({reason})")
    else:
        cp = _loader.cupy() if torch.cuda.is_available() else None
        if cp is not None:
            lines.append(f"cupy {cp.__version__}")
        else:
            lines.append(f"cupy: {_loader.cupy_error() or 'not loaded (no CUDA device)'}")
    kdir = _loader.kernel_dir()
    lines.append(f"kernel sources: {kdir if kdir is not None else 'NOT FOUND'}")
    lines.append("kernels (CUDA tensors; CPU tensors always use torch):")
    for name, path in kernel_status().items():
        lines.append(f"  {name:<14} {path}")
    s = "\n".join(lines)
    print(s, file=file)
    return s
