"""The 0.1 keywords of ``refine`` and ``iterative_refine``, mapped onto the method objects.

Kept for one release (0.2): each call that uses them warns with the equivalent new call.
Remove this module in 0.3.
"""

from __future__ import annotations

import warnings

from ..precond import Auto, Nystrom, as_preconditioner
from ._krylov import Krylov
from ._methods import Products
from ._subspace import Subspace

__all__ = ["LEGACY_KEYWORDS", "from_legacy"]

_SUBSPACE = {
    "rank": "rank",
    "oversample": "oversample",
    "power_iters": "power_iters",
    "subspace": "subspace",
    "subspace_inputs": "subspace_inputs",
    "rank_candidates": "rank_candidates",
    "rcond": "rcond",
    "reduced_solver": "reduced",
    "max_dense_bytes": "max_dense_bytes",
    "maxiter": "reduced_maxiter",
    "atol": "reduced_atol",
    "btol": "reduced_btol",
}
_KRYLOV = {k: k for k in ("damp", "maxiter", "atol", "btol", "conlim", "space")}
_PRODUCTS = {k: k for k in ("jvp", "chunk_size", "batch_size")}
LEGACY_KEYWORDS = frozenset(
    set(_SUBSPACE) | set(_KRYLOV) | set(_PRODUCTS) | {"preconditioner", "precond_rank"}
)


def _call(cls: str, kw: dict) -> str:
    def show(v):
        return "..." if k == "subspace_inputs" else repr(v)

    args = []
    for k, v in kw.items():
        args.append(f"{k}={show(v)}")
    return f"ls.{cls}({', '.join(args)})"


def _krylov_preconditioner(value, rank):
    """Old ``preconditioner=`` plus ``precond_rank=`` as one specification."""
    spec = as_preconditioner(value)
    if rank is None:
        return spec
    if isinstance(spec, Auto):
        return Auto(nystrom=Nystrom(rank=rank))
    if isinstance(spec, Nystrom):
        return Nystrom(rank=rank)
    raise TypeError(
        f"precond_rank: applies to the Nystrom preconditioner, got it with preconditioner={value!r}"
    )


def from_legacy(method, products, kwargs: dict, *, stacklevel: int = 3):
    """``(method, products)`` objects for a call made with 0.1 keywords (and a warning)."""
    if not kwargs:
        return method, products
    unknown = sorted(set(kwargs) - LEGACY_KEYWORDS)
    if unknown:
        raise TypeError(f"refine: got an unexpected keyword argument {unknown[0]!r}")
    if not isinstance(method, str):
        raise TypeError(
            f"refine: got method={type(method).__name__}(...) and the old keywords "
            f"{sorted(kwargs)}; put every setting on the method object"
        )
    if method not in ("subspace", "krylov"):
        raise ValueError(
            f"method: expected 'subspace', 'krylov' or a method object, got {method!r}"
        )
    pkw = {_PRODUCTS[k]: kwargs.pop(k) for k in list(kwargs) if k in _PRODUCTS}
    if pkw and products is not None:
        raise TypeError(f"refine: got products= and the old keywords {sorted(pkw)}; use one")
    new_products = Products(**pkw) if pkw else products
    if method == "subspace":
        bad = sorted(set(kwargs) - set(_SUBSPACE))
        if bad:
            raise TypeError(f"{bad[0]}: does not apply to method='subspace' (it was ignored)")
        if kwargs.get("reduced_solver") == "dense":
            for k in ("maxiter", "atol", "btol"):
                kwargs.pop(k, None)  # ignored by the dense solve in 0.1 as well
        mkw = {_SUBSPACE[k]: v for k, v in kwargs.items()}
        new = Subspace(**mkw)
        cls = "Subspace"
    else:
        bad = sorted(set(kwargs) - set(_KRYLOV) - {"preconditioner", "precond_rank"})
        if bad:
            raise TypeError(f"{bad[0]}: does not apply to method='krylov' (it was ignored)")
        mkw = {k: v for k, v in kwargs.items() if k in _KRYLOV}
        if "preconditioner" in kwargs or "precond_rank" in kwargs:
            mkw["preconditioner"] = _krylov_preconditioner(
                kwargs.get("preconditioner", "auto"), kwargs.get("precond_rank")
            )
        new = Krylov(**mkw)
        cls = "Krylov"
    hint = f"method={_call(cls, mkw)}"
    if pkw:
        hint += f", products={_call('Products', pkw)}"
    warnings.warn(
        f"refine: the keywords {sorted(set(kwargs) | set(pkw))} are deprecated and will be "
        f"removed in 0.3; call refine(..., {hint}) instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return new, new_products
