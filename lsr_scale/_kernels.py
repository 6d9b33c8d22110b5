"""Kernel registry: optional CUDA fast paths with torch reference implementations.

Each public function here defines a kernel's semantics in plain torch and dispatches:

- CPU tensors always run the torch implementation;
- CUDA tensors run the CUDA kernel from ``kernels/*.cu`` (compiled at first use with
  ``cupy.RawModule``, sharing memory with torch through DLPack, launched on torch's current
  stream) when CuPy is installed, the source compiles and ``LSR_SCALE_DISABLE_CUDA_KERNELS`` is
  not set to ``1``; otherwise the torch implementation, with one warning per process when the
  fallback is caused by a missing CuPy or a failed compile.

CuPy is never imported at package import time: only on the first call with a CUDA tensor (or by
:func:`show_config` / :func:`kernel_status`). See ``docs/gpu.md``.

Kernels
-------
``fwht_``               in-place unnormalized Walsh-Hadamard transform along dim 0 (SRHT).
``sparse_sign_apply``   ``S @ X`` for a sparse-sign sketch (deterministic gather, no atomics).
``sparse_sign_apply_t`` ``S.T @ Y``.
``lowrank_apply``       Nystrom preconditioner ``U diag(d) U^T y + c (y - U U^T y)``, U possibly
                        stored in bf16/fp16 with accumulation in the working dtype.
``lsmr_update_``        fused LSMR update of ``x``, ``h``, ``hbar`` (optionally also ``||x||^2``).
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "fwht_",
    "sparse_sign_apply",
    "sparse_sign_apply_t",
    "sparse_sign_csr",
    "SparseSignCSR",
    "lowrank_apply",
    "lowrank_project",
    "lowrank_expand",
    "lsmr_update_",
    "show_config",
    "kernel_status",
    "DISABLE_ENV",
]

DISABLE_ENV = "LSR_SCALE_DISABLE_CUDA_KERNELS"
_KERNEL_DIR_ENV = "LSR_SCALE_KERNEL_DIR"

# kernel name -> source file in kernels/ (and an entry point used to force compilation)
_SOURCES = {
    "fwht": ("fwht.cu", "fwht_pass_f32"),
    "sparse_sign": ("sparse_sign.cu", "sparse_sign_f32"),
    "sparse_sign_t": ("sparse_sign.cu", "sparse_sign_t_f32"),
    "lowrank": ("lowrank.cu", "lowrank_zt_bf16_f32"),
    "lsmr_update": ("lsmr_update.cu", "lsmr_update_f32"),
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_NP_SCALAR = {torch.float32: np.float32, torch.float64: np.float64}

_lock = threading.Lock()
_cupy_mod = None  # the cupy module once imported
_cupy_err: str | None = None  # why cupy is unavailable ("" = not tried yet is None)
_modules: dict = {}  # (source, device index) -> cupy.RawModule | Exception
_functions: dict = {}  # (source, device index, entry) -> cupy.RawKernel
_streams: dict = {}  # (device index, stream ptr) -> cupy stream wrapper
_sm_count: dict = {}
_warned: set = set()


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _kernel_dir() -> Path | None:
    """The folder holding the .cu sources: wheel layout first, then the source checkout."""
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get(_KERNEL_DIR_ENV):
        candidates.append(Path(os.environ[_KERNEL_DIR_ENV]))
    candidates += [here / "kernels", here.parent / "kernels"]
    for c in candidates:
        if (c / "fwht.cu").is_file():
            return c
    return None


def _cupy():
    """Import cupy on first use; return it, or None (reason in ``_cupy_err``)."""
    global _cupy_mod, _cupy_err
    if _cupy_mod is not None or _cupy_err is not None:
        return _cupy_mod
    with _lock:
        if _cupy_mod is None and _cupy_err is None:
            try:
                import cupy

                _cupy_mod = cupy
            except Exception as exc:  # ImportError, or a broken CUDA install
                _cupy_err = f"cupy not available ({type(exc).__name__}: {exc})"
    return _cupy_mod


def _warn_once(key, msg: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _load_module(source: str, device_index: int):
    """Compile ``source`` for one device (cached); return the RawModule or the exception."""
    key = (source, device_index)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    cp = _cupy()
    try:
        kdir = _kernel_dir()
        if kdir is None:
            raise FileNotFoundError(
                f"kernel sources not found (looked in lsr_scale/kernels and <repo>/kernels; "
                f"set {_KERNEL_DIR_ENV})"
            )
        code = (kdir / source).read_text()
        with cp.cuda.Device(device_index):
            mod = cp.RawModule(code=code, options=("--std=c++14",))
            entry = next(e for s, e in _SOURCES.values() if s == source)
            mod.get_function(entry)  # forces the compile now, so failures surface here
    except Exception as exc:
        mod = exc
    _modules[key] = mod
    return mod


def _status(kernel: str, device: torch.device | None = None) -> tuple[bool, str]:
    """(True, "cuda") if ``kernel`` would run its CUDA path on ``device``, else (False, reason)."""
    if _disabled():
        return False, f"{DISABLE_ENV}=1"
    if device is None:
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return False, "CPU tensor"
    cp = _cupy()
    if cp is None:
        return False, _cupy_err or "cupy not available"
    index = device.index if device.index is not None else torch.cuda.current_device()
    mod = _load_module(_SOURCES[kernel][0], index)
    if isinstance(mod, Exception):
        msg = str(mod).strip().splitlines()
        return False, f"compile failed ({type(mod).__name__}: {msg[0] if msg else ''})"
    return True, "cuda"


def _use_cuda(kernel: str, *tensors: torch.Tensor) -> bool:
    """Dispatch decision for one call; warns once per process on an unexpected fallback."""
    if not tensors or any(t.device.type != "cuda" for t in tensors):
        return False
    return _use_cuda_device(kernel, tensors[0].device)


def _use_cuda_device(kernel: str, device: torch.device) -> bool:
    if _disabled():
        return False
    ok, reason = _status(kernel, device)
    if not ok:
        key = "cupy" if _cupy_mod is None else ("compile", _SOURCES[kernel][0])
        _warn_once(
            key,
            f"lsr_scale: CUDA kernel '{kernel}' unavailable, using the torch fallback: {reason}. "
            f"Install cupy (pip install 'lsr_scale[cuda]') or set {DISABLE_ENV}=1 to silence.",
        )
    return ok


def _buffer(out, shape, like):
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


def _finish(res, out):
    """Return ``res``, or copy it into ``out`` (unless it already is ``out``'s memory)."""
    if out is None:
        return res
    if res.data_ptr() != out.data_ptr() or res.shape != out.shape:
        out.copy_(res.reshape(out.shape))
    return out


def kernel_status(device: torch.device | str | None = None) -> dict[str, str]:
    """Which path each kernel takes for CUDA tensors: ``"cuda"`` or ``"torch (reason)"``.

    CPU tensors always take the torch path. ``device`` defaults to the current CUDA device.
    This may import CuPy and compile the kernels (once per process).

    Examples
    --------
    >>> import os
    >>> os.environ["LSR_SCALE_DISABLE_CUDA_KERNELS"] = "1"
    >>> kernel_status()["fwht"]
    'torch (LSR_SCALE_DISABLE_CUDA_KERNELS=1)'
    >>> del os.environ["LSR_SCALE_DISABLE_CUDA_KERNELS"]
    """
    dev = torch.device(device) if device is not None else None
    out = {}
    for name in _SOURCES:
        ok, reason = _status(name, dev)
        out[name] = "cuda" if ok else f"torch ({reason})"
    return out


def show_config(file=None) -> str:
    """Print (and return) versions, the GPU, and which path each kernel takes.

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
    from . import __version__

    lines = [f"lsr_scale {__version__}", f"torch {torch.__version__}"]
    lines.append(f"torch CUDA {torch.version.cuda or 'none (CPU build)'}")
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name} ({p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor})")
    else:
        lines.append("GPU: none")
    if _disabled():
        lines.append(f"cupy: not loaded ({DISABLE_ENV}=1)")
    else:
        cp = _cupy() if torch.cuda.is_available() else None
        if cp is not None:
            lines.append(f"cupy {cp.__version__}")
        else:
            lines.append(f"cupy: {_cupy_err or 'not loaded (no CUDA device)'}")
    kdir = _kernel_dir()
    lines.append(f"kernel sources: {kdir if kdir is not None else 'NOT FOUND'}")
    lines.append("kernels (CUDA tensors; CPU tensors always use torch):")
    for name, path in kernel_status().items():
        lines.append(f"  {name:<14} {path}")
    s = "\n".join(lines)
    print(s, file=file)
    return s


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------


def _function(source: str, entry: str, device_index: int):
    key = (source, device_index, entry)
    fn = _functions.get(key)
    if fn is None:
        mod = _load_module(source, device_index)
        if isinstance(mod, Exception):
            raise mod
        fn = mod.get_function(entry)
        _functions[key] = fn
    return fn


def _device_index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _sms(device_index: int) -> int:
    n = _sm_count.get(device_index)
    if n is None:
        n = torch.cuda.get_device_properties(device_index).multi_processor_count
        _sm_count[device_index] = n
    return n


def _stream(cp, device_index: int):
    """cupy wrapper of torch's current stream on ``device_index`` (so launches stay ordered)."""
    ptr = torch.cuda.current_stream(device_index).cuda_stream
    key = (device_index, ptr)
    s = _streams.get(key)
    if s is None:
        s = cp.cuda.Stream.null if ptr == 0 else cp.cuda.ExternalStream(ptr, device_index)
        _streams[key] = s
    return s


def _launch(source, entry, device_index, grid, block, args, shared_mem=0, raw=False):
    """Launch ``entry`` on torch's current stream.

    torch tensors in ``args`` are exchanged zero-copy through DLPack (bf16/fp16 as int16 views),
    inside the stream context so the DLPack handshake sees the same stream (no extra sync).
    With ``raw=True`` tensors are passed as device pointers instead (the fused LSMR update,
    where seven DLPack handshakes would cost more than the kernel); the caller guarantees they
    are contiguous, on ``device_index``, and of the dtype the kernel expects.
    """
    cp = _cupy_mod
    fn = _function(source, entry, device_index)
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


def _i64(x) -> np.int64:
    return np.int64(x)


# ---------------------------------------------------------------------------------------------
# FWHT
# ---------------------------------------------------------------------------------------------


def _fwht_torch(X: torch.Tensor) -> torch.Tensor:
    n = X.shape[0]
    tail = X.shape[1:]
    h = 1
    while h < n:
        Y = X.reshape(n // (2 * h), 2, h, *tail)
        a = Y[:, 0].clone()
        b = Y[:, 1]
        Y[:, 0].add_(b)
        Y[:, 1].neg_().add_(a)
        h *= 2
    return X


def _floor_pow2(x: int) -> int:
    return 1 << (int(x).bit_length() - 1)


def _fwht_plan(n: int, k: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Passes (outer, L, inner, C): each applies log2(L) butterfly stages in shared memory."""
    passes = []
    h0 = 1
    while h0 < n:
        inner = h0 * k
        C = min(inner, 32)
        L = min(n // h0, _floor_pow2(tile // C))
        passes.append((n // (h0 * L), L, inner, C))
        h0 *= L
    return passes


def _fwht_cuda(X: torch.Tensor) -> None:
    n = X.shape[0]
    k = X.numel() // n
    dev = _device_index(X)
    tile = 4096 if X.dtype == torch.float32 else 2048  # 16 KiB of shared memory per block
    entry = "fwht_pass_" + _SUFFIX[X.dtype]
    cap = _sms(dev) * 16
    for outer, L, inner, C in _fwht_plan(n, k, tile):
        ncol = -(-inner // C)
        grid = min(outer * ncol, cap)
        threads = min(512, max(32, (L * C) // 2))
        _launch(
            "fwht.cu",
            entry,
            dev,
            (grid,),
            (threads,),
            (X, _i64(outer), _i64(L), _i64(inner), _i64(C), _i64(ncol)),
            shared_mem=L * C * X.element_size(),
        )


def fwht_(X: torch.Tensor) -> torch.Tensor:
    """In-place unnormalized fast Walsh-Hadamard transform along dim 0 of ``X`` (n, ...).

    ``n`` must be a power of two (padding is the caller's job). Returns ``X``, now holding
    ``H_n @ X`` with ``H_n`` the +-1 Sylvester-ordered Hadamard matrix
    (``scipy.linalg.hadamard(n)``). Trailing dims are batched.

    CUDA path (float32/float64): one shared-memory pass for the first log2(tile) stages, then
    global passes that each batch up to 7 further stages; bit-identical to the torch path.
    """
    n = X.shape[0] if X.ndim else 0
    if X.ndim == 0 or n & (n - 1):
        raise ValueError(
            f"fwht_: expected a power-of-two length along dim 0, got shape {tuple(X.shape)}"
        )
    if n <= 1 or X.numel() == 0:
        return X
    if X.dtype in _SUFFIX and _use_cuda("fwht", X):
        Y = X if X.is_contiguous() else X.contiguous()
        _fwht_cuda(Y)
        if Y is not X:
            X.copy_(Y)
        return X
    return _fwht_torch(X)


# ---------------------------------------------------------------------------------------------
# sparse-sign sketch
# ---------------------------------------------------------------------------------------------


class SparseSignCSR(NamedTuple):
    """Row-major (CSR) copy of a sparse-sign sketch S (s x n), entries of a row in (t, j) order.

    ``rowptr`` (s + 1,) int64, ``col`` (nnz,) int32 (int64 when n >= 2**31), ``val`` (nnz,),
    ``max_per_row`` the largest row count.
    """

    s: int
    n: int
    rowptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    max_per_row: int


_csr_cache: OrderedDict = OrderedDict()
_CSR_CACHE_SIZE = 8


def sparse_sign_csr(indices: torch.Tensor, values: torch.Tensor, s: int, dtype=None):
    """Build the CSR-by-row form of S once (stable sort: deterministic). Syncs the device once.

    The entries of row ``r`` are ordered by (t, j), the order in which the CPU reference adds
    them, so the CUDA gather kernel reproduces the CPU result bit for bit. ``values`` are cast to
    ``dtype`` (default ``values.dtype``).
    """
    n, zeta = indices.shape
    dtype = dtype or values.dtype
    flat = indices.t().reshape(-1)
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if int(lo) < 0 or int(hi) >= s:
            raise ValueError(
                f"sparse_sign: expected indices in [0, {s}), got [{int(lo)}, {int(hi)}]"
            )
    order = torch.sort(flat, stable=True).indices
    cols = torch.arange(n, device=indices.device).repeat(zeta)[order]
    col = cols.to(torch.int32) if n < 2**31 else cols
    val = values.t().reshape(-1).to(dtype)[order].contiguous()
    counts = torch.bincount(flat, minlength=s)
    rowptr = torch.zeros(s + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    maxc = int(counts.max()) if s and flat.numel() else 0
    return SparseSignCSR(s, n, rowptr, col.contiguous(), val, maxc)


def _cached_csr(indices, values, s, dtype) -> SparseSignCSR:
    key = (id(indices), id(values), s, dtype)
    hit = _csr_cache.get(key)
    if hit is not None:
        wi, wv, vi, vv, csr = hit
        if wi() is indices and wv() is values and vi == indices._version and vv == values._version:
            _csr_cache.move_to_end(key)
            return csr
    csr = sparse_sign_csr(indices, values, s, dtype)
    _csr_cache[key] = (
        weakref.ref(indices),
        weakref.ref(values),
        indices._version,
        values._version,
        csr,
    )
    while len(_csr_cache) > _CSR_CACHE_SIZE:
        _csr_cache.popitem(last=False)
    return csr


def _check_sketch(indices, values, X, what):
    if indices.ndim != 2 or values.shape != indices.shape:
        raise ValueError(
            f"{what}: expected indices and values of the same shape (n, zeta), got "
            f"{tuple(indices.shape)} and {tuple(values.shape)}"
        )


def _sparse_sign_torch_cpu(indices, values, X, s):
    """Reference: index_add_ over t then j (sequential on the CPU: deterministic)."""
    out = X.new_zeros((s, X.shape[1]))
    for t in range(indices.shape[1]):
        out.index_add_(0, indices[:, t], values[:, t, None] * X)
    return out


def _sparse_sign_torch_padded(csr: SparseSignCSR, X, chunk_bytes=1 << 28):
    """Deterministic torch formulation for devices where index_add_ uses atomics.

    Row r's products are scattered (no collisions) into a zero-padded (s, max_per_row, kc) block
    and reduced with ``sum(dim=1)``: the same bits on every run, but a different summation order
    from the CPU reference (agreement to rounding, not bit for bit). Columns are chunked so the
    padded block stays below ``chunk_bytes``.
    """
    s, k = csr.s, X.shape[1]
    out = X.new_zeros((s, k))
    nnz = csr.col.numel()
    if nnz == 0 or k == 0:
        return out
    counts = csr.rowptr[1:] - csr.rowptr[:-1]
    row = torch.repeat_interleave(torch.arange(s, device=X.device), counts)
    rank = torch.arange(nnz, device=X.device) - csr.rowptr[:-1][row]
    col = csr.col.long()
    M = max(csr.max_per_row, 1)
    kc = max(1, min(k, chunk_bytes // max(1, s * M * X.element_size())))
    for c0 in range(0, k, kc):
        c1 = min(k, c0 + kc)
        P = X.new_zeros((s, M, c1 - c0))
        P[row, rank] = csr.val[:, None] * X[col, c0:c1]
        out[:, c0:c1] = P.sum(dim=1)
    return out


def _lanes(k: int) -> int:
    lpr = 1
    while lpr < 32 and lpr < k:
        lpr *= 2
    return lpr


def sparse_sign_apply(
    indices, values, X, s: int, *, csr: SparseSignCSR | None = None, out=None
) -> torch.Tensor:
    """Return ``S @ X`` for the sparse-sign sketch S (s x n).

    Column ``j`` of S has nonzeros ``values[j, t]`` at rows ``indices[j, t]`` (repeated rows add
    up). ``indices`` and ``values`` have shape (n, zeta); ``X`` has shape (n, k) or (n,) (then
    the result is (s,)). ``values`` are used in ``X``'s dtype.

    Deterministic on every path: on the CPU, ``index_add_`` adds sequentially (t, then j); on a
    GPU the CUDA kernel sums each output row's entries in that same order with separately
    rounded products (bit-identical to the CPU result), and the CUDA torch fallback uses a
    collision-free padded gather reduced with ``sum`` (reproducible, equal up to rounding).
    ``csr`` (from :func:`sparse_sign_csr`) skips the per-call CSR lookup; otherwise the CSR form
    is cached per (indices, values) pair. ``out`` (shape (s, k) or (s,)) receives the result.
    """
    _check_sketch(indices, values, X, "sparse_sign_apply")
    vec = X.ndim == 1
    X2 = X[:, None] if vec else X
    if X2.ndim != 2 or X2.shape[0] != indices.shape[0]:
        raise ValueError(
            f"sparse_sign_apply: expected X of shape ({indices.shape[0]}, k), got {tuple(X.shape)}"
        )
    if X2.device.type == "cuda":
        if csr is None and indices.device != X2.device:  # uncached: keep the sketch on X's device
            indices, values = indices.to(X2.device), values.to(X2.device)
        if csr is None:
            csr = _cached_csr(indices, values, s, X2.dtype)
        k = X2.shape[1]
        if (
            X2.dtype in _SUFFIX
            and csr.col.dtype == torch.int32
            and csr.val.dtype == X2.dtype
            and csr.rowptr.device == X2.device
            and _use_cuda("sparse_sign", X2)
        ):
            Xc = X2.contiguous()
            res = _buffer(out, (s, k), X2)
            if s and k:
                lpr = _lanes(k)
                rows_per_block = 256 // lpr
                grid = (-(-s // rows_per_block), -(-k // (lpr * 4)))
                _launch(
                    "sparse_sign.cu",
                    "sparse_sign_" + _SUFFIX[X2.dtype],
                    _device_index(X2),
                    grid,
                    (256,),
                    (csr.rowptr, csr.col, csr.val, Xc, res, _i64(s), _i64(k), _i64(lpr)),
                )
        else:
            res = _sparse_sign_torch_padded(csr, X2)
        return _finish(res[:, 0] if vec else res, out)
    res = _sparse_sign_torch_cpu(indices, values.to(X2.dtype), X2, s)
    return _finish(res[:, 0] if vec else res, out)


def sparse_sign_apply_t(indices, values, Y, *, out=None) -> torch.Tensor:
    """Return ``S.T @ Y`` for the sparse-sign sketch S; ``Y`` has shape (s, k) or (s,).

    ``out[j] = sum_t values[j, t] * Y[indices[j, t]]``, summed in t order (a gather: no
    collisions, deterministic everywhere). The CUDA kernel is bit-identical to the torch path.
    ``out`` (shape (n, k) or (n,)) receives the result.
    """
    _check_sketch(indices, values, Y, "sparse_sign_apply_t")
    vec = Y.ndim == 1
    Y2 = Y[:, None] if vec else Y
    n, zeta = indices.shape
    v = values.to(Y2.dtype)
    if Y2.dtype in _SUFFIX and _use_cuda("sparse_sign_t", Y2, indices, values):
        k = Y2.shape[1]
        res = _buffer(out, (n, k), Y2)
        if n and k:
            lpr = _lanes(k)
            rows_per_block = 256 // lpr
            grid = (-(-n // rows_per_block), -(-k // (lpr * 4)))
            _launch(
                "sparse_sign.cu",
                "sparse_sign_t_" + _SUFFIX[Y2.dtype],
                _device_index(Y2),
                grid,
                (256,),
                (
                    indices.to(torch.int64).contiguous(),
                    v.contiguous(),
                    Y2.contiguous(),
                    res,
                    _i64(n),
                    _i64(zeta),
                    _i64(k),
                    _i64(lpr),
                ),
            )
        return _finish(res[:, 0] if vec else res, out)
    if zeta == 0:
        res = Y2.new_zeros((n, Y2.shape[1]))
    else:
        res = v[:, 0, None] * Y2[indices[:, 0]]
        for t in range(1, zeta):
            res = res + v[:, t, None] * Y2[indices[:, t]]
    return _finish(res[:, 0] if vec else res, out)


# ---------------------------------------------------------------------------------------------
# low-rank (Nystrom) preconditioner application
# ---------------------------------------------------------------------------------------------

_LOWPREC = {torch.bfloat16: "bf16", torch.float16: "f16"}
_LOWRANK_MAX_L = 4096


def _lowrank_torch(U, d, c, y, chunk_bytes=1 << 28):
    """U (d - c) U^T y + c y; a low-precision U is upcast in row chunks (bounded memory)."""
    w_of = (lambda z: (d - c) * z) if y.ndim == 1 else (lambda z: (d - c)[:, None] * z)
    if U.dtype == y.dtype:
        return U @ w_of(U.T @ y) + c * y
    m, l = U.shape
    rows = max(1, chunk_bytes // max(1, l * y.element_size()))
    z = None
    for r0 in range(0, m, rows):
        Uc = U[r0 : r0 + rows].to(y.dtype)
        part = Uc.T @ y[r0 : r0 + rows]
        z = part if z is None else z + part
    if z is None:
        z = y.new_zeros((l,) + tuple(y.shape[1:]))
    w = w_of(z)
    out = torch.empty_like(y)
    for r0 in range(0, m, rows):
        Uc = U[r0 : r0 + rows].to(y.dtype)
        out[r0 : r0 + rows] = Uc @ w + c * y[r0 : r0 + rows]
    return out


def _lowrank_passes_ok(U, y) -> bool:
    return (
        y.dtype in _SUFFIX
        and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))
        and (U.dtype in _LOWPREC or U.dtype == y.dtype)
        and U.is_contiguous()
        and 0 < U.shape[1] <= _LOWRANK_MAX_L
        and U.shape[0] > 0
        and _use_cuda("lowrank", U, y)
    )


def _lowrank_name(U, dt):
    sfx = _SUFFIX[dt]
    store = _LOWPREC.get(U.dtype, sfx)
    pair = store != sfx and U.shape[1] % 2 == 0 and U.data_ptr() % 4 == 0
    name = f"{store}x2_{sfx}" if pair else f"{store}_{sfx}"
    Uk = U.view(torch.int32) if pair else U  # two 16-bit elements per 32-bit load
    lu = U.shape[1] // 2 if pair else U.shape[1]
    return name, Uk, lu


def _c_args(c, dt):
    if isinstance(c, torch.Tensor) and c.device.type == "cuda":
        return c.to(dt).reshape(()).contiguous(), _NP_SCALAR[dt](0)
    return None, _NP_SCALAR[dt](float(c))


def _lowrank_pass1_cuda(U, yv, dv, c):
    """Pass 1 over U: ``w = (d - c) * (U^T y)`` (d = 1, c = 0 gives ``U^T y`` exactly)."""
    m, l = U.shape
    dt = yv.dtype
    dev = _device_index(yv)
    name, Uk, lu = _lowrank_name(U, dt)
    cptr, cval = _c_args(c, dt)
    threads = min(1024, max(32, -(-lu // 32) * 32))
    G = max(1, min(_sms(dev) * 16, -(-m // 64)))
    rpb = -(-m // G)
    G = -(-m // rpb)
    partial = torch.empty((G, l), dtype=dt, device=yv.device)
    _launch(
        "lowrank.cu",
        "lowrank_zt_" + name,
        dev,
        (G,),
        (threads,),
        (Uk, yv, partial, _i64(m), _i64(lu), _i64(rpb)),
    )
    w = torch.empty(l, dtype=dt, device=yv.device)
    _launch(
        "lowrank.cu",
        "lowrank_reduce_" + _SUFFIX[dt],
        dev,
        (-(-l // 128),),
        (128,),
        (partial, _i64(G), _i64(l), dv, cptr if cptr is not None else 0, cval, w),
    )
    return w


def _lowrank_pass2_cuda(U, yv, w, c, res):
    """Pass 2 over U: ``res = U w + c y``."""
    m, l = U.shape
    dt = yv.dtype
    dev = _device_index(yv)
    name, Uk, lu = _lowrank_name(U, dt)
    cptr, cval = _c_args(c, dt)
    grid = max(1, min(_sms(dev) * 8, -(-m // 8)))
    _launch(
        "lowrank.cu",
        "lowrank_apply_" + name,
        dev,
        (grid,),
        (256,),
        (Uk, yv, w.contiguous(), cptr if cptr is not None else 0, cval, res, _i64(m), _i64(lu)),
        shared_mem=l * yv.element_size(),
    )
    return res


def _lowrank_cuda(U, d, c, y, out=None):
    yv = y.reshape(-1).contiguous()
    dv = d.to(device=y.device, dtype=y.dtype).contiguous()
    w = _lowrank_pass1_cuda(U, yv, dv, c)
    res = _lowrank_pass2_cuda(U, yv, w, c, _buffer(out, (U.shape[0],), yv))
    return _finish(res.reshape(y.shape), out)


def _upcast_rows(U, dtype, chunk_bytes=1 << 28):
    """Yield ``(rows, U[rows].to(dtype))`` in row chunks (bounded extra memory)."""
    m, l = U.shape
    step = max(1, chunk_bytes // max(1, l * torch.finfo(dtype).bits // 8))
    for r0 in range(0, m, step):
        yield slice(r0, r0 + step), U[r0 : r0 + step].to(dtype)


def lowrank_project(U, y) -> torch.Tensor:
    """Return ``U.T @ y`` for a basis ``U`` (m, l) stored in y's dtype, bfloat16 or float16.

    The first of the two passes of :func:`lowrank_apply`, for preconditioners that put their
    own (l x l) core between the passes. Accumulates in ``y``'s dtype. CUDA path as in
    :func:`lowrank_apply`.
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0]:
        raise ValueError(
            f"lowrank_project: expected U (m, l) and y (m,) or (m, k); got U {tuple(U.shape)}, "
            f"y {tuple(y.shape)}"
        )
    if _lowrank_passes_ok(U, y):
        yv = y.reshape(-1).contiguous()
        ones = torch.ones(U.shape[1], dtype=y.dtype, device=y.device)
        w = _lowrank_pass1_cuda(U, yv, ones, 0.0)
        return w if y.ndim == 1 else w[:, None]
    if U.dtype == y.dtype:
        return U.T @ y
    z = y.new_zeros((U.shape[1],) + tuple(y.shape[1:]))
    for rows, Uc in _upcast_rows(U, y.dtype):
        z += Uc.T @ y[rows]
    return z


def lowrank_expand(U, w, c, y, *, out=None) -> torch.Tensor:
    """Return ``U @ w + c * y`` for a basis ``U`` (m, l) stored in y's dtype, bf16 or fp16.

    The second pass of :func:`lowrank_apply`. ``c`` is a number or a 0-d tensor.
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0] or w.shape[0] != U.shape[1]:
        raise ValueError(
            f"lowrank_expand: expected U (m, l), w (l,) and y (m,); got U {tuple(U.shape)}, "
            f"w {tuple(w.shape)}, y {tuple(y.shape)}"
        )
    if _lowrank_passes_ok(U, y) and w.ndim == 1:
        yv = y.reshape(-1).contiguous()
        res = _lowrank_pass2_cuda(U, yv, w.to(y.dtype), c, _buffer(out, (U.shape[0],), yv))
        return _finish(res.reshape(y.shape), out)
    if U.dtype == y.dtype:
        return _finish(U @ w + c * y, out)
    res = torch.empty_like(y)
    for rows, Uc in _upcast_rows(U, y.dtype):
        res[rows] = Uc @ w + c * y[rows]
    return _finish(res, out)


def lowrank_apply(U, d, c, y, *, out=None) -> torch.Tensor:
    """Return ``U (d * (U.T y)) + c (y - U U.T y)`` for an orthonormal basis ``U`` (m, l).

    ``U`` may be stored in bfloat16 or float16 (or the dtype of ``y``); arithmetic happens in
    ``y``'s dtype (fp32 accumulation for fp32 ``y``). ``d`` has shape (l,), ``c`` is a number or
    a 0-d tensor (read on the device: no host sync), ``y`` has shape (m,) or (m, k).

    CUDA path for y of shape (m,) or (m, 1), float32/float64, l <= 4096: two fused passes over
    U (``z = U^T y`` with the ``d``/``c`` folding, then ``U w + c y``), reproducible run to run.
    Wider ``y`` uses torch matmul (a GEMM is the right tool there). ``out`` (shaped like ``y``)
    receives the result.
    """
    if U.ndim != 2 or y.shape[0] != U.shape[0] or d.shape != (U.shape[1],):
        raise ValueError(
            f"lowrank_apply: expected U (m, l), d (l,), y (m,) or (m, k); got U "
            f"{tuple(U.shape)}, d {tuple(d.shape)}, y {tuple(y.shape)}"
        )
    if _lowrank_passes_ok(U, y):
        return _lowrank_cuda(U, d, c, y, out)
    return _finish(_lowrank_torch(U, d, c, y), out)


# ---------------------------------------------------------------------------------------------
# fused LSMR update
# ---------------------------------------------------------------------------------------------


def _coef(a, dt, device):
    """(pointer tensor or None, scalar value) for a kernel coefficient."""
    if isinstance(a, torch.Tensor):
        if a.device.type == "cuda":
            return a.detach().to(device=device, dtype=dt).reshape(()).contiguous(), 0.0
        return None, float(a)
    return None, float(a)


def lsmr_update_(x, h, hbar, v, a, b, c, *, sqnorm_x: torch.Tensor | None = None) -> None:
    """Fused LSMR vector update, in place: ``hbar = h + a*hbar; x += b*hbar; h = v + c*h``.

    ``a``, ``b`` and ``c`` are 0-d tensors (kept on the device: no host sync) or numbers. If
    ``sqnorm_x`` (a 0-d tensor) is given it receives ``||x||^2`` of the updated ``x``.

    CUDA path (contiguous float32/float64 vectors): one kernel for the three updates (plus a
    one-block reduction for ``sqnorm_x``), bit-identical to the torch path for the vectors; the
    norm is reproducible run to run and equal to ``x @ x`` up to rounding.
    """
    vecs = (x, h, hbar, v)
    dt = x.dtype
    if (
        dt in _SUFFIX
        and all(
            t.dtype == dt and t.is_contiguous() and t.device == x.device and t.numel() == x.numel()
            for t in vecs
        )
        and _use_cuda("lsmr_update", *vecs)
    ):
        m = x.numel()
        dev = _device_index(x)
        (pa, a0), (pb, b0), (pc, c0) = (_coef(q, dt, x.device) for q in (a, b, c))
        G = max(1, min(_sms(dev) * 8, -(-m // 1024)))
        partial = torch.empty(G, dtype=dt, device=x.device) if sqnorm_x is not None else None
        sc = _NP_SCALAR[dt]
        sfx = _SUFFIX[dt]
        if m:
            _launch(
                "lsmr_update.cu",
                "lsmr_update_" + sfx,
                dev,
                (G,),
                (256,),
                (
                    x,
                    h,
                    hbar,
                    v,
                    pa if pa is not None else 0,
                    pb if pb is not None else 0,
                    pc if pc is not None else 0,
                    sc(a0),
                    sc(b0),
                    sc(c0),
                    _i64(m),
                    partial if partial is not None else 0,
                ),
                raw=True,
            )
        if sqnorm_x is not None:
            if m:
                direct = sqnorm_x.dtype == dt and sqnorm_x.device == x.device
                res = sqnorm_x if direct else torch.empty((), dtype=dt, device=x.device)
                _launch(
                    "lsmr_update.cu",
                    "lsmr_sqnorm_finish_" + sfx,
                    dev,
                    (1,),
                    (256,),
                    (partial, _i64(G), res),
                    raw=True,
                )
                if not direct:
                    sqnorm_x.copy_(res)
            else:
                sqnorm_x.zero_()
        return None
    hbar.mul_(a).add_(h)
    x.add_(b * hbar)
    h.mul_(c).add_(v)
    if sqnorm_x is not None:
        xf = x.reshape(-1)
        sqnorm_x.copy_(torch.dot(xf, xf))
    return None
