"""Parameter dicts as vectors: the column order of :class:`~lsr_scale.JacobianOperator`.

A parameter dict ``{name: tensor}`` is read in insertion order, each tensor flattened
row-major; that concatenation is ``vec(theta)``, the operator's column space.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._checks import check_tensor_dict, describe

__all__ = ["flatten_params", "unflatten_params"]


def flatten_params(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate a dict of tensors into one 1-D tensor.

    Tensors are taken in the dict's insertion order and each is flattened row-major, the
    column order of :class:`JacobianOperator`.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Floating tensors of one dtype on one device.

    Returns
    -------
    torch.Tensor
        A new 1-D tensor of length ``sum(p.numel() for p in params.values())``.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import flatten_params
    >>> flatten_params({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([5.0])})
    tensor([1., 2., 3., 4., 5.])
    """
    params = check_tensor_dict(params, "params")
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def unflatten_params(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict:
    """Split a 1-D tensor into a dict shaped like ``like`` (the inverse of flatten_params).

    Parameters
    ----------
    vec : torch.Tensor
        1-D tensor of length equal to the total number of entries of ``like``.
    like : dict of str to torch.Tensor
        Gives the names, order and shapes.

    Returns
    -------
    dict of str to torch.Tensor
        Views into ``vec`` (no copy), one per entry of ``like``.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import unflatten_params
    >>> like = {"w": torch.zeros(2, 2), "b": torch.zeros(1)}
    >>> out = unflatten_params(torch.arange(5.0), like)
    >>> out["w"], out["b"]
    (tensor([[0., 1.],
            [2., 3.]]), tensor([4.]))
    """
    if not isinstance(like, Mapping):
        raise TypeError(f"like: expected a dict of str -> torch.Tensor, got {describe(like)}")
    total = sum(int(t.numel()) for t in like.values())
    if not isinstance(vec, torch.Tensor):
        raise TypeError(f"vec: expected a torch.Tensor of shape ({total},), got {describe(vec)}")
    if vec.ndim != 1 or vec.shape[0] != total:
        raise ValueError(
            f"vec: expected shape ({total},) (the total size of like), got {tuple(vec.shape)}"
        )
    out, offset = {}, 0
    for key, t in like.items():
        n = int(t.numel())
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
