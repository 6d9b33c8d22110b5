"""The construction checks of :class:`~lsr_scale.JacobianOperator` (``check=True``).

The rules are stated in the class's Notes: a finite residual, the same residual from two
identical calls, and every parameter tensor affecting it. All use fixed vectors, none
random.
"""

from __future__ import annotations

import torch

from ._backend import probe_vector
from ._params import flatten_params, real_numel

__all__ = ["check_finite_blocks", "check_deterministic", "check_all_params_used"]

# Two identical calls may differ by this many units of the dtype's eps times the size of the
# terms (see JacobianOperator, check=True): room for nondeterministic reductions on GPUs.
DETERMINISM_EPS = 256


def check_finite_blocks(blocks) -> None:
    """Raise ``ValueError`` naming the first non-finite rows of the residual blocks."""
    bad_rows, total_rows, offset = [], 0, 0
    all_2d = all(r.ndim >= 2 for r in blocks)
    for r in blocks:
        rows = r.reshape(r.shape[0], -1) if r.ndim >= 2 else r.reshape(-1, 1)
        bad = ~torch.isfinite(rows).all(dim=1)
        idx = bad.nonzero().reshape(-1)
        if idx.numel():
            bad_rows.append(idx + offset)
        offset += rows.shape[0]
        total_rows += rows.shape[0]
    if bad_rows:
        idx = torch.cat(bad_rows)
        unit = "rows" if all_2d else "entries"
        first = idx[:5].tolist()
        more = ", ..." if idx.numel() > 5 else ""
        raise ValueError(
            f"residual_fn: expected a finite residual, got {idx.numel()} of {total_rows} "
            f"residual {unit} non-finite ({unit} [{', '.join(map(str, first))}{more}]); "
            "check the inputs, targets and parameters for NaN/inf"
        )


def check_deterministic(J, first: list[torch.Tensor]) -> None:
    """A second plain call of every block against the first (the rule is in the Notes)."""
    theta = None
    for i, a in enumerate(first):
        b = J._eval_block(i)
        if torch.equal(a, b):
            continue
        if theta is None:
            theta = flatten_params(J.params)[:, None]
        jt = J._backend.matmat(i, theta, [slice(0, 1)])
        scale = max(float(a.abs().max()), float(b.abs().max()), float(jt.abs().max()))
        tol = DETERMINISM_EPS * torch.finfo(J.dtype).eps * scale
        diff = float((a - b).abs().max())
        if not diff <= tol:
            raise ValueError(
                "residual_fn: expected identical outputs from identical calls (to within "
                f"{DETERMINISM_EPS} eps x {scale:.3g} = {tol:.3e}), but the model's outputs "
                f"change between identical calls (max difference {diff:.3e}); is dropout "
                "active or batch-norm in train mode? call model.eval()"
            )


def check_all_params_used(J) -> None:
    """Raise ``ValueError`` naming the parameter tensors whose block of ``J^T w`` is zero."""
    w = probe_vector(J.shape[0], J.dtype, J.device)
    g = J._rmatmat(w[:, None])[:, 0]
    peaks, offset = [], 0
    for key, t in J.params.items():
        k = real_numel(t)
        if k:
            peaks.append((key, g[offset : offset + k].abs().amax()))
        offset += k
    values = torch.stack([p for _, p in peaks]).tolist() if peaks else []
    names = [key for (key, _), v in zip(peaks, values) if v == 0]
    if names:
        raise ValueError(
            f"params: expected every parameter tensor to affect the residual, got "
            f"{len(names)} whose gradient is exactly zero: {names}; exclude them with "
            "params= (e.g. JacobianOperator.from_module(..., params=[...]))"
        )
