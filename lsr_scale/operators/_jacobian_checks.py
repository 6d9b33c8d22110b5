"""The construction checks of :class:`~lsr_scale.JacobianOperator` (``check=True``).

The rules are stated in the class's Notes: a finite residual, the same residual from two
identical calls, and every parameter tensor affecting it. All use fixed vectors, none
random. The product self-check (``self_check=True``), :func:`check_products`, is here too.
"""

from __future__ import annotations

import warnings

import torch

from ._backend import probe_vector
from ._dottest import dot_test_error
from ._params import flatten_params, real_numel

__all__ = [
    "check_finite_blocks",
    "check_deterministic",
    "check_all_params_used",
    "check_products",
    "SELF_CHECK_EPS",
    "SELF_CHECK_FLOOR",
]

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


# The product self-check's tolerance, relative to the size of the terms: SELF_CHECK_EPS
# units of the dtype's eps, and never below SELF_CHECK_FLOOR. In float32 that is 3.1e-5;
# correct products measured 1e-9 to 4e-7 over the layer sweep of
# tests/test_layer_products.py (recurrent, attention, convolutions with every padding mode,
# normalization, embeddings, an FNO) and the wrong linearizations it exists for 3e-4 to
# 5e-2. In float64 it is 1.5e-8 (half the digits), not 256 eps = 5.7e-14: neuraloperator's
# FNO in float64 has dot-test errors of 1e-10 to 2e-9 in every back end (forward,
# fresh, double-VJP alike), far above float64 rounding and far below a wrong product.
SELF_CHECK_EPS = 256
SELF_CHECK_FLOOR = 1.5e-8

# A fixed seed for the self-check's two random vectors: a private generator, so the check
# neither draws from nor depends on torch's global RNG.
_SELF_CHECK_SEED = 20_260_120


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    ref = float(torch.linalg.vector_norm(b.double()))
    diff = float(torch.linalg.vector_norm((a - b).double()))
    return diff / ref if ref > 0 else (0.0 if diff == 0 else float("inf"))


def _fresh_matvec(J, v: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [J._backend.fresh_jvp(i, v[:, None])[:, 0] for i in range(J.num_blocks)], dim=0
    )


def _dot_error(J, u, v, Jv) -> float:
    # u in the output (row) space, v in the parameter space
    err, scale = dot_test_error(J, v, u, Jv, J._rmatvec(u), terms=False)
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def check_products(J, label: str, make_double_vjp) -> dict:
    """The product self-check: is ``J v`` right, and is ``J^T`` its transpose?

    Along one random direction ``v`` (a private, fixed-seed generator):

    1. with a cached linearization, two linearized JVPs against a fresh ``torch.func.jvp``
       (two, because a linearization that overwrites its stored constants is right once);
    2. one dot test ``<u, J v> = <J^T u, v>`` against the cached VJP.

    Each is measured relative to the size of its terms and must stay within
    ``max(SELF_CHECK_EPS eps, SELF_CHECK_FLOOR)``: 3.1e-5 in float32, 1.5e-8 in float64.
    On a failure the operator falls back to the back end that passes (fresh JVPs, then the
    double-VJP back end, built by ``make_double_vjp()``), warns once naming ``label`` and
    the choice, and the returned record says so. If no back end passes, ``RuntimeError``.
    The products are not counted in ``num_matvecs``.

    Returns
    -------
    dict
        ``linearize_error`` (relative, or None without a linearization), ``dot_test``
        (relative), ``tolerance``, ``backend`` (what the operator uses now) and ``fallback``
        (what changed and why, or None).
    """
    gen = torch.Generator().manual_seed(_SELF_CHECK_SEED)
    n, m = J.shape
    v = torch.randn(m, generator=gen, dtype=torch.float64).to(J.dtype).to(J.device)
    u = torch.randn(n, generator=gen, dtype=torch.float64).to(J.dtype).to(J.device)
    tol = max(SELF_CHECK_EPS * torch.finfo(J.dtype).eps, SELF_CHECK_FLOOR)
    record = dict(linearize_error=None, dot_test=None, tolerance=tol, fallback=None)
    changes = []

    Jv = None
    if J._backend.mode == "forward":
        fresh = _fresh_matvec(J, v)
        if J._backend.uses_linearize:
            lin = max(_relative(J._matvec(v), fresh), _relative(J._matvec(v), fresh))
            record["linearize_error"] = lin
            if not lin <= tol:
                J._backend.drop_linearization(
                    f"the product self-check found the cached linearization off by {lin:.1e} "
                    f"(relative) from a fresh torch.func.jvp; tolerance {tol:.1e}"
                )
                changes.append(
                    f"the cached linearization's JVP differs from a fresh torch.func.jvp by "
                    f"{lin:.1e} (relative; tolerance {tol:.1e}): fresh torch.func.jvp products"
                )
        Jv = fresh
    else:
        Jv = J._matvec(v)
    dot = _dot_error(J, u, v, Jv)
    record["dot_test"] = dot
    if not dot <= tol and J._backend.mode == "forward":
        J._backend = make_double_vjp()
        J.jvp_fallback_reason = (
            f"the product self-check's dot test failed on torch.func products ({dot:.1e}, "
            f"tolerance {tol:.1e})"
        )
        changes.append(
            f"the forward-mode JVP is not the transpose of the VJP (dot test {dot:.1e}, "
            f"tolerance {tol:.1e}): the double-VJP back end"
        )
        dot = _dot_error(J, u, v, J._matvec(v))
        record["dot_test"] = dot
    if not dot <= tol:
        raise RuntimeError(
            f"{label}: expected Jacobian products whose JVP is the transpose of the VJP, got a "
            f"dot-test error of {dot:.1e} relative to the size of the terms (tolerance "
            f"{tol:.1e}) with the {J._backend.mode} back end"
            + (f" after {'; '.join(changes)}" if changes else "")
            + "; check the model for operations with inconsistent custom autograd rules, or "
            "pass self_check=False (ls.Products(self_check=False)) to take the products as "
            "they are"
        )
    record["backend"] = J._backend.mode + (" (linearized)" if J._backend.uses_linearize else "")
    if changes:
        record["fallback"] = "; then ".join(changes)
        warnings.warn(
            f"{label}: the product self-check found wrong Jacobian products and changed the "
            f"back end: {record['fallback']}. Products stay right; only their cost changes. "
            "See docs/solvers.md, 'Checking the products'.",
            RuntimeWarning,
            stacklevel=4,
        )
    return record
