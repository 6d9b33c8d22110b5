"""Input validation shared by the whole package.

Every public entry point validates at the boundary and raises (never ``assert``) with a
message of the form "<what>: expected <...>, got <...>".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import torch

__all__ = [
    "check_tensor",
    "check_vector",
    "check_matrix",
    "check_operator",
    "check_dtype",
    "check_device",
    "check_float_dtype",
    "check_inputs",
    "check_tolerance",
    "check_positive_int",
    "check_nonnegative_int",
    "check_at_most",
    "check_at_least",
    "check_choice",
    "check_callable",
    "check_generator",
    "describe",
    "check_auto_or_bool",
    "check_callables",
    "check_param_dict",
    "real_dtype",
    "check_finite_rows",
]


def describe(x) -> str:
    """Short description of ``x`` for error messages: shape, dtype and device of tensors."""
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return f"{type(x).__name__}"


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" name the same device when the current device is 0.
    if a.index is None or b.index is None:
        return True
    return a.index == b.index


def _shape_str(shape) -> str:
    """``(4, k)`` for the shape pattern ``(4, None)`` (free sizes are named k, l, ...)."""
    free = iter("klmnpq")
    dims = [next(free) if d is None else str(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def check_dtype(x, dtype: torch.dtype, name: str, *, like: str | None = None) -> None:
    """Raise ``TypeError`` unless ``x.dtype == dtype``; ``like`` names the object whose dtype
    it must have (adds a fix-it: "convert with name.to(like.dtype)")."""
    if x.dtype != dtype:
        fix = f" — convert with {name}.to({like}.dtype)" if like else ""
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}{fix}")


def check_device(x, device: torch.device, name: str, *, like: str | None = None) -> None:
    """Raise ``ValueError`` unless ``x.device`` is ``device`` ("cuda" matches "cuda:0")."""
    if not _same_device(x.device, device):
        fix = f" — move with {name}.to({like}.device)" if like else ""
        raise ValueError(f"{name}: expected device {device}, got {x.device}{fix}")


def check_tensor(
    x, shape, dtype: torch.dtype, device: torch.device, name: str, *, note="", like=None
) -> torch.Tensor:
    """Raise unless ``x`` is a tensor matching the shape pattern ``shape`` (``None`` entries
    match any size) with the given dtype and device; return ``x``.

    ``note`` follows the expected shape in the message (e.g. ``" (A.shape[0])"``); ``like``
    adds the fix-its of :func:`check_dtype` and :func:`check_device`.
    """
    want = _shape_str(shape)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {want}, got {describe(x)}")
    if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, x.shape)):
        raise ValueError(f"{name}: expected shape {want}{note}, got {tuple(x.shape)}")
    check_dtype(x, dtype, name, like=like)
    check_device(x, device, name, like=like)
    return x


def check_vector(x, n: int, dtype: torch.dtype, device: torch.device, name: str, **kw) -> None:
    """Raise if ``x`` is not a 1-D tensor of length ``n`` with the given dtype and device
    (keywords as for :func:`check_tensor`)."""
    check_tensor(x, (n,), dtype, device, name, **kw)


def check_matrix(x, n: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    """Raise if ``x`` is not a 2-D tensor with ``n`` rows and the given dtype and device."""
    check_tensor(x, (n, None), dtype, device, name)


def check_operator(
    op, shape, dtype: torch.dtype, device: torch.device | None, name: str, *, note=""
) -> None:
    """Raise unless the operator ``op`` has the shape pattern ``shape`` (``None``: any size),
    ``dtype`` and (unless ``device`` is None) ``device``."""
    if len(op.shape) != len(shape) or any(
        d is not None and d != s for d, s in zip(shape, op.shape)
    ):
        raise ValueError(f"{name}: expected shape {_shape_str(shape)}{note}, got {op.shape}")
    check_dtype(op, dtype, name)
    if device is not None:
        check_device(op, device, name)


def check_float_dtype(value, name: str) -> torch.dtype:
    """Raise ``TypeError`` unless ``value`` is a floating ``torch.dtype``; return it."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name}: expected a floating torch.dtype, got {value!r}")
    return value


def check_inputs(
    tensors, what: str, dtype, device, *, whose="the model's", hint="", allow_empty=False
) -> None:
    """Raise unless ``tensors`` are tensors with ``dtype`` (floating ones), ``device`` and one
    leading (row) dimension, non-empty unless ``allow_empty``."""
    for i, x in enumerate(tensors):
        name = f"{what}[{i}]" if len(tensors) > 1 else what
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or (x.shape[0] == 0 and not allow_empty):
            raise ValueError(
                f"{name}: expected at least one row of data, got shape {tuple(x.shape)}"
            )
        if x.is_floating_point() and x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} ({whose}), got {x.dtype}{hint}")
        if x.device != device:
            raise ValueError(f"{name}: expected device {device} ({whose}), got {x.device}")
    n = tensors[0].shape[0]
    if any(x.shape[0] != n for x in tensors):
        raise ValueError(
            f"{what}: expected one leading (row) dimension, got shapes "
            f"{[tuple(x.shape) for x in tensors]}"
        )


def check_tolerance(value, name: str, *, allow_zero: bool = True, allow_inf: bool = False) -> float:
    """Validate a tolerance-like scalar: real, non-negative (or positive), finite unless
    ``allow_inf`` (e.g. ``conlim``, where inf means no limit); never NaN."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    bad_inf = math.isinf(value) and not allow_inf
    if math.isnan(value) or bad_inf or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        kind = "a number" if allow_inf else "a finite number"
        tail = " or inf" if allow_inf else ""
        raise ValueError(f"{name}: expected {kind} {bound}{tail}, got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def check_at_most(value, bound, name: str, bound_name: str):
    """Raise ``ValueError`` unless ``value <= bound`` ("expected <= bound_name = bound")."""
    if value > bound:
        raise ValueError(f"{name}: expected <= {bound_name} = {bound}, got {value}")
    return value


def check_at_least(value, bound, name: str, bound_name: str):
    """Raise ``ValueError`` unless ``value >= bound`` ("expected >= bound_name = bound")."""
    if value < bound:
        raise ValueError(f"{name}: expected >= {bound_name} = {bound}, got {value}")
    return value


def check_callable(value, name: str, *, allow_none: bool = True):
    """Raise ``TypeError`` unless ``value`` is callable (or None when ``allow_none``)."""
    if not (callable(value) or (allow_none and value is None)):
        what = "a callable or None" if allow_none else "a callable"
        raise TypeError(f"{name}: expected {what}, got {describe(value)}")
    return value


def check_generator(value, name: str = "generator"):
    """Raise ``TypeError`` unless ``value`` is a ``torch.Generator`` or None; return it.

    What None means is the package's randomness rule: see
    :func:`lsr_scale.randomized.resolve_generator`.
    """
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {describe(value)}")
    return value


def check_choice(value, choices, name: str):
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {opts}, got {value!r}")
    return value


def check_auto_or_bool(value, name: str):
    """Raise ``ValueError`` unless ``value`` is ``"auto"``, ``True`` or ``False``; return it."""
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    raise ValueError(f"{name}: expected one of 'auto', True, False, got {value!r}")


def check_callables(value, name: str) -> list:
    """Raise ``TypeError`` unless ``value`` is a callable or a non-empty list or tuple of
    callables; return them as a list."""
    if callable(value):
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise TypeError(
            f"{name}: expected a callable or a non-empty list of callables, got {describe(value)}"
        )
    for i, fn in enumerate(value):
        if not callable(fn):
            raise TypeError(f"{name}[{i}]: expected a callable, got {describe(fn)}")
    return list(value)


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """``float32`` for ``complex64`` (and ``float32``), ``float64`` for ``complex128``, ..."""
    return dtype.to_real() if dtype.is_complex else dtype


def check_param_dict(value, name: str) -> dict:
    """Raise unless ``value`` is a non-empty mapping of str to floating or complex tensors of
    one real precision on one device (see the module doc); return it as a new dict."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict of str -> torch.Tensor, got {describe(value)}")
    if len(value) == 0:
        raise ValueError(f"{name}: expected at least one tensor, got an empty dict")
    first = None
    for key, t in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: expected str keys, got {type(key).__name__} key {key!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{key!r}]: expected a torch.Tensor, got {describe(t)}")
        if not (t.dtype.is_floating_point or t.dtype.is_complex):
            raise TypeError(f"{name}[{key!r}]: expected a floating or complex dtype, got {t.dtype}")
        if first is None:
            first = (key, t)
        elif real_dtype(t.dtype) != real_dtype(first[1].dtype):
            raise TypeError(
                f"{name}: expected one dtype for all tensors (complex ones of the matching "
                f"precision: complex64 with float32, complex128 with float64), got "
                f"{first[1].dtype} ({first[0]!r}) and {t.dtype} ({key!r})"
            )
        elif t.device != first[1].device:
            raise ValueError(
                f"{name}: expected one device for all tensors, got {first[1].device} "
                f"({first[0]!r}) and {t.device} ({key!r})"
            )
    return dict(value)


def check_finite_rows(tensors, what: str) -> None:
    """Raise ``ValueError`` naming the rows of ``tensors`` (floating ones) that hold NaN/inf.

    A saturating activation can hide an infinite input from the outputs, so data is checked
    itself, not only through the residual.
    """
    for i, x in enumerate(tensors):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()) or x.numel() == 0:
            continue
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).reshape(-1)
            first = ", ".join(str(int(r)) for r in rows[:5])
            more = ", ..." if rows.numel() > 5 else ""
            name = f"{what}[{i}]" if len(tensors) > 1 else what
            raise ValueError(
                f"{name}: expected finite values, got {rows.numel()} of {x.shape[0]} rows with "
                f"NaN/inf (rows [{first}{more}])"
            )
