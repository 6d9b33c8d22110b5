"""Optional CUDA fast paths, each with a torch reference implementation that defines it.

Each kernel function dispatches per call:

- CPU tensors always run the torch implementation;
- CUDA tensors run the CUDA kernel from the top-level ``kernels/*.cu`` sources (shipped as the
  data package ``lsr_scale.kernels``, compiled at first use with ``cupy.RawModule``, sharing
  memory with torch through DLPack, launched on torch's current stream) when CuPy is installed,
  the source compiles and the path is switched on; otherwise the torch implementation, with one
  warning per process when the fallback is caused by a missing CuPy or a failed compile.

The path is switched off by ``LSR_SCALE_DISABLE_CUDA_KERNELS=1`` or, in-process, inside
``with lsr_scale.cuda.disabled(): ...``. CuPy is never imported at package import time: only on
the first call with a CUDA tensor, or by :func:`kernel_status` / :func:`show_config`. See
``docs/gpu.md``.

Layout: :mod:`._loader` (CuPy, sources, compiled modules, streams, launching: one cache, one
lock), :mod:`._registry` (entry-point names, availability, warn-once), :mod:`._switch` (the
switch), and one module per kernel holding its torch reference and its launch:
:mod:`.fwht`, :mod:`.sparse_sign`, :mod:`.lowrank`, :mod:`.lsmr_update`.

Kernels
-------
``fwht_``               in-place unnormalized Walsh-Hadamard transform along dim 0 (SRHT).
``sparse_sign_apply``   ``S @ X`` for a sparse-sign sketch (deterministic gather, no atomics).
``sparse_sign_apply_t`` ``S.T @ Y``.
``lowrank_apply``       Nystrom preconditioner ``U diag(d) U^T y + c (y - U U^T y)``, U possibly
                        stored in bf16/fp16 with accumulation in the working dtype;
                        ``lowrank_project`` and ``lowrank_expand`` are its two passes.
``lsmr_update_``        fused LSMR update of ``x``, ``h``, ``hbar`` (optionally also ``||x||^2``).
"""

from ._registry import kernel_status, show_config
from ._switch import DISABLE_ENV, disabled, enabled
from .fwht import fwht_
from .lowrank import lowrank_apply, lowrank_expand, lowrank_project
from .lsmr_update import lsmr_update_
from .sparse_sign import SparseSignCSR, sparse_sign_apply, sparse_sign_apply_t, sparse_sign_csr

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
    "disabled",
    "enabled",
    "kernel_status",
    "show_config",
    "DISABLE_ENV",
]
