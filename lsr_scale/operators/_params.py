"""Parameter dicts as vectors: the column order of :class:`~lsr_scale.JacobianOperator`.

A parameter dict ``{name: tensor}`` is read in insertion order, each tensor flattened
row-major; that concatenation is ``vec(theta)``, the operator's column space.

Complex parameters
------------------
A complex tensor ``p`` enters ``vec(theta)`` as the real tensor ``torch.view_as_real(p)``
(shape ``(*p.shape, 2)``): each complex entry is the pair (real part, imaginary part), in
that order, so it is refined as two real parameters. The real dtype of a dict is that of
its real tensors; its complex tensors must have the matching precision (``complex64`` with
``float32``, ``complex128`` with ``float64``). Functions of the parameters receive the
complex tensors rebuilt from the pairs (:func:`as_complex`), so the residual sees the
parameters it was written for, while every transform (JVP, VJP, vmap) acts on real ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._checks import check_param_dict, describe

__all__ = ["flatten_params", "unflatten_params"]


def complex_keys(params: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The names of the complex tensors of ``params``, in order."""
    return tuple(k for k, t in params.items() if t.is_complex())


def real_view(params: Mapping[str, torch.Tensor]) -> dict:
    """``params`` with each complex tensor replaced by ``torch.view_as_real`` of it (a view)."""
    return {
        k: torch.view_as_real(t.resolve_conj()) if t.is_complex() else t for k, t in params.items()
    }


def as_complex(params: Mapping[str, torch.Tensor], keys) -> dict:
    """The inverse of :func:`real_view` for the names ``keys``: ``p[..., 0] + i p[..., 1]``.

    Built with ``torch.complex``, a new tensor that every transform differentiates and
    batches, whatever the storage offset or strides of ``p`` (``torch.view_as_complex``
    needs an even offset and unit last stride, which column slices do not always have).
    """
    if not keys:
        return params
    return {k: torch.complex(t[..., 0], t[..., 1]) if k in keys else t for k, t in params.items()}


def to_precision(module: torch.nn.Module, dtype: torch.dtype, device=None) -> torch.nn.Module:
    """Convert ``module`` in place to the real precision ``dtype``, complex tensors included.

    Floating parameters and buffers become ``dtype``, complex ones ``dtype.to_complex()``
    (``Module.to(torch.float64)`` would cast complex parameters to real, dropping their
    imaginary parts); others keep their dtype. ``device`` moves everything. Returns
    ``module``; copy it first to keep the original.
    """

    def convert(t):
        if t.is_complex():
            return t.to(device=device, dtype=dtype.to_complex())
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return module._apply(convert)


def real_numel(t: torch.Tensor) -> int:
    """Entries of ``t`` in ``vec(theta)``: two per complex entry."""
    return int(t.numel()) * (2 if t.is_complex() else 1)


def flatten_params(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate a dict of tensors into one 1-D tensor.

    Tensors are taken in the dict's insertion order and each is flattened row-major, the
    column order of :class:`JacobianOperator`.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Floating tensors of one dtype on one device; complex tensors of the matching
        precision may be among them, each contributing its (real, imaginary) pairs (see
        the module doc).

    Returns
    -------
    torch.Tensor
        A new 1-D tensor of the real dtype, of length ``sum(p.numel() for p in
        params.values())`` with complex entries counted twice.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import flatten_params
    >>> flatten_params({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([5.0])})
    tensor([1., 2., 3., 4., 5.])
    >>> flatten_params({"z": torch.tensor([1 + 2j, 3 - 4j]), "b": torch.tensor([5.0])})
    tensor([ 1.,  2.,  3., -4.,  5.])
    """
    params = check_param_dict(params, "params")
    return torch.cat([p.detach().reshape(-1) for p in real_view(params).values()])


def unflatten_params(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict:
    """Split a 1-D tensor into a dict shaped like ``like`` (the inverse of flatten_params).

    Parameters
    ----------
    vec : torch.Tensor
        1-D real tensor of length equal to the total number of entries of ``like`` (two per
        complex entry).
    like : dict of str to torch.Tensor
        Gives the names, order, shapes and which tensors are complex.

    Returns
    -------
    dict of str to torch.Tensor
        One per entry of ``like``: views into ``vec`` (no copy) for real tensors; for complex
        ones, new complex tensors built from their (real, imaginary) pairs.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import unflatten_params
    >>> like = {"w": torch.zeros(2, 2), "b": torch.zeros(1)}
    >>> out = unflatten_params(torch.arange(5.0), like)
    >>> out["w"], out["b"]
    (tensor([[0., 1.],
            [2., 3.]]), tensor([4.]))
    >>> unflatten_params(torch.arange(4.0), {"z": torch.zeros(2, dtype=torch.complex64)})
    {'z': tensor([0.+1.j, 2.+3.j])}
    """
    if not isinstance(like, Mapping):
        raise TypeError(f"like: expected a dict of str -> torch.Tensor, got {describe(like)}")
    for key, t in like.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"like[{key!r}]: expected a torch.Tensor, got {describe(t)}")
    total = sum(real_numel(t) for t in like.values())
    if not isinstance(vec, torch.Tensor):
        raise TypeError(f"vec: expected a torch.Tensor of shape ({total},), got {describe(vec)}")
    if vec.ndim != 1 or vec.shape[0] != total:
        raise ValueError(
            f"vec: expected shape ({total},) (the total size of like), got {tuple(vec.shape)}"
        )
    out, offset = {}, 0
    for key, t in like.items():
        n = real_numel(t)
        if t.is_complex():
            pairs = vec[offset : offset + n].view(*t.shape, 2)
            out[key] = torch.complex(pairs[..., 0], pairs[..., 1])
        else:
            out[key] = vec[offset : offset + n].view(t.shape)
        offset += n
    return out


def unflatten_columns(V: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict:
    """``(m, k)`` matrix -> dict of ``(k, *shape)`` tensors (the column index first, for vmap)."""
    out, offset, k = {}, 0, V.shape[1]
    for key, t in like.items():
        n = int(t.numel())
        out[key] = V[offset : offset + n].T.reshape(k, *t.shape)
        offset += n
    return out


def flatten_columns(grads: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
    """dict of ``(k, *shape)`` tensors -> ``(m, k)`` matrix (the inverse of unflatten_columns)."""
    return torch.cat([g.reshape(k, -1) for g in grads.values()], dim=1).T


def select_param_names(all_params: Mapping, params, what: str = "params") -> list[str]:
    """The names to differentiate: ``params`` checked against ``all_params``.

    ``None`` selects every entry with ``requires_grad``; a str is one name; otherwise an
    iterable of distinct known names, in the order given.
    """
    if params is None:
        return [k for k, p in all_params.items() if p.requires_grad]
    if isinstance(params, str):
        params = [params]
    names = list(params)
    unknown = [k for k in names if k not in all_params]
    if unknown:
        raise ValueError(
            f"{what}: expected names of the model's parameters ({list(all_params)}), "
            f"got unknown {unknown}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: expected distinct names, got {names}")
    return names
