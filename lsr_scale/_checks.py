"""Input validation shared by the whole package.

Every public entry point validates at the boundary and raises (never ``assert``) with a
message of the form "<what>: expected <...>, got <...>".
"""

from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = [
    "check_vector",
    "check_matrix",
    "check_finite",
    "check_tolerance",
    "check_positive_int",
    "check_nonnegative_int",
    "check_choice",
    "describe",
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


def check_vector(x, n: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    """Raise if ``x`` is not a 1-D tensor of length ``n`` with the given dtype and device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape ({n},), got {describe(x)}")
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if not _same_device(x.device, device):
        raise ValueError(f"{name}: expected device {device}, got {x.device}")


def check_matrix(x, n: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    """Raise if ``x`` is not a 2-D tensor with ``n`` rows and the given dtype and device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape ({n}, k), got {describe(x)}")
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n}, k), got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if not _same_device(x.device, device):
        raise ValueError(f"{name}: expected device {device}, got {x.device}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming how many entries are non-finite and where the first ones are."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        flat = bad.reshape(-1).nonzero().reshape(-1)
        count = int(flat.numel())
        first = flat[:5].tolist()
        more = ", ..." if count > 5 else ""
        raise ValueError(
            f"{name}: expected all entries finite, got {count} non-finite of {x.numel()} "
            f"(flat indices {first}{more})"
        )


def check_tolerance(value, name: str, *, allow_zero: bool = True) -> float:
    """Validate a tolerance-like scalar: real, finite, non-negative (or positive)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def check_choice(value, choices, name: str):
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {opts}, got {value!r}")
    return value
