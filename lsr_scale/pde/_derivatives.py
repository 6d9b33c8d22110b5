"""Derivatives of a network's output with respect to its inputs, point by point.

Every helper takes a *pointwise* scalar function ``f(x, *rows) -> 0-d tensor`` of one point
``x`` of shape ``(d,)`` (and optional per-point extra inputs ``rows``, e.g. a DeepONet's branch
input) and evaluates a derivative at ``N`` points by ``torch.func.vmap`` over the points.
Per point, gradients use ``jacrev`` and second derivatives ``jacfwd(jacrev)`` (a ``d x d``
Hessian per point; never a dense Hessian over the batch). All of them are plain
``torch.func`` compositions, so a residual built from them can itself be differentiated with
respect to the network's *parameters* by ``torch.func.jvp`` / ``vjp`` (forward-over-reverse),
which is what :class:`lsr_scale.JacobianOperator` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, jacfwd, jacrev, vmap

from ._forward_laplacian import forward_laplacian, supports_forward_laplacian

__all__ = [
    "scalar_fn",
    "value",
    "gradient",
    "value_and_gradient",
    "partial",
    "hessian",
    "laplacian",
    "value_and_laplacian",
    "directional_derivative",
]

PointFn = Callable[..., torch.Tensor]


def scalar_fn(
    model: torch.nn.Module, params=None, *, output: int = 0, x_position: int = -1
) -> PointFn:
    """Turn a batched module into a pointwise scalar function ``f(x, *rows)``.

    ``f(x, *rows)`` calls ``model(*args)`` on a batch of one, where ``args`` are the ``rows``
    (each given a leading batch dimension) with ``x[None]`` inserted at ``x_position``
    (default: last), and returns output component ``output`` as a 0-d tensor. With
    ``params`` (a dict name -> tensor) the call is ``functional_call(model, params, args)``,
    so the result is a function of those parameters.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> f = scalar_fn(net)
    >>> f(torch.zeros(2)).shape
    torch.Size([])
    """

    def f(x: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        args = [r.unsqueeze(0) for r in rows]
        pos = len(args) + 1 + x_position if x_position < 0 else x_position
        args.insert(pos, x.unsqueeze(0))
        out = model(*args) if params is None else functional_call(model, params, tuple(args))
        return out.reshape(-1)[output]

    return f


def _check_points(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 2-D tensor of points (N, d), got {shape}")


def _map(g: PointFn, x: torch.Tensor, rows: Sequence[torch.Tensor], chunk_size=None):
    _check_points(x)
    return vmap(g, in_dims=(0,) + (0,) * len(rows), chunk_size=chunk_size)(x, *rows)


def value(f: PointFn, x: torch.Tensor, *rows, chunk_size=None) -> torch.Tensor:
    """``f`` at every point: ``(N,)``."""
    return _map(f, x, rows, chunk_size)


def gradient(f: PointFn, x: torch.Tensor, *rows, chunk_size=None) -> torch.Tensor:
    """``grad_x f`` at every point: ``(N, d)``."""
    return _map(jacrev(f), x, rows, chunk_size)


def value_and_gradient(f: PointFn, x: torch.Tensor, *rows, chunk_size=None):
    """``(f, grad_x f)`` at every point: ``(N,)`` and ``(N, d)``, sharing one forward pass."""

    def g(xi, *r):
        return jacrev(lambda z: (f(z, *r), f(z, *r)), has_aux=True)(xi)

    grad, val = _map(g, x, rows, chunk_size)
    return val, grad


def partial(f: PointFn, x: torch.Tensor, *rows, dims: Sequence[int], chunk_size=None):
    """Mixed partial derivative ``d^k f / dx_{dims[0]} ... dx_{dims[k-1]}``: ``(N,)``.

    The first derivative is taken in reverse mode, the others by forward-mode directional
    derivatives along unit vectors (forward-over-reverse). ``dims=()`` gives ``f`` itself.

    Examples
    --------
    >>> import torch
    >>> f = lambda x: x[0] ** 2 * x[1]
    >>> partial(f, torch.tensor([[1.0, 3.0]]), dims=(0, 0))
    tensor([6.])
    """
    dims = tuple(int(d) for d in dims)
    if not dims:
        return value(f, x, *rows, chunk_size=chunk_size)
    d = x.shape[-1]
    if any(k < 0 or k >= d for k in dims):
        raise ValueError(f"dims: expected indices in [0, {d}), got {dims}")

    def first(xi, *r):
        return jacrev(f)(xi, *r)[dims[0]]

    g = first
    for k in dims[1:]:

        def g(xi, *r, _h=g, _k=k):
            e = torch.zeros_like(xi)
            e[_k] = 1.0
            return torch.func.jvp(lambda z: _h(z, *r), (xi,), (e,))[1]

    return _map(g, x, rows, chunk_size)


def hessian(f: PointFn, x: torch.Tensor, *rows, chunk_size=None) -> torch.Tensor:
    """Per-point Hessian ``d^2 f / dx^2``: ``(N, d, d)`` (forward-over-reverse)."""
    return _map(jacfwd(jacrev(f)), x, rows, chunk_size)


def laplacian(
    f,
    x: torch.Tensor,
    *rows,
    params=None,
    output: int = 0,
    route: str = "auto",
    chunk_size=None,
) -> torch.Tensor:
    """``sum_i d^2 f / dx_i^2`` at every point: ``(N,)``.

    ``f`` is a pointwise scalar function ``f(x, *rows)`` (see :func:`scalar_fn`) or a
    network (``nn.Module``). For a function, the Laplacian is the trace of the per-point
    ``d x d`` Hessian from ``jacfwd(jacrev(f))`` (``torch.func``).

    For a network, ``route="auto"`` picks :func:`~lsr_scale.pde.forward_laplacian` when
    :func:`~lsr_scale.pde.supports_forward_laplacian` accepts the model (MLPs of
    Linear and tanh / sigmoid / SiLU / exact GELU / sine layers, the modified MLP, a DeepONet
    with such a trunk) and the ``torch.func`` Hessian trace of ``scalar_fn(f, params,
    output=output)`` otherwise. Both agree to rounding and both compose with parameter
    JVPs/VJPs; the forward Laplacian's products are several times cheaper
    (``bench/results/pde_cpu.md``).

    Parameters
    ----------
    f : callable or nn.Module
    x : Tensor ``(N, d)``
        The points; for a module, its last input (a DeepONet's trunk input).
    *rows : Tensor
        Per-point extra inputs (a DeepONet's branch input ``u``). For a module, rows of one
        row are broadcast to all points.
    params : dict or None
        Module only: parameter tensors by name (default: the module's own).
    output : int
        Module only: the output component.
    route : {"auto", "forward", "func"}
        Module only: ``"forward"`` requires a supported model (``TypeError`` otherwise),
        ``"func"`` always takes the ``torch.func`` Hessian trace.
    chunk_size : int or None
        ``vmap`` chunk size of the ``torch.func`` route.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.models import MLP
    >>> net = MLP([2, 8, 1]).double()
    >>> x = torch.rand(4, 2, dtype=torch.float64)
    >>> fast, ref = laplacian(net, x), laplacian(net, x, route="func")
    >>> bool(torch.allclose(fast, ref))
    True
    """
    if route not in ("auto", "forward", "func"):
        raise ValueError(f"route: expected 'auto', 'forward' or 'func', got {route!r}")
    if isinstance(f, torch.nn.Module):
        _check_points(x)
        if route == "forward" or (route == "auto" and supports_forward_laplacian(f)):
            return forward_laplacian(f, x, params, output, rows=rows)[2]
        rows = tuple(r.expand(x.shape[0], *r.shape[1:]) if r.shape[0] == 1 else r for r in rows)
        f = scalar_fn(f, params, output=output)
    elif params is not None or output != 0 or route == "forward":
        raise TypeError(
            f"params, output, route='forward': expected an nn.Module for f, got {type(f).__name__}"
        )
    h = hessian(f, x, *rows, chunk_size=chunk_size)
    return torch.diagonal(h, dim1=-2, dim2=-1).sum(-1)


def value_and_laplacian(f: PointFn, x: torch.Tensor, *rows, chunk_size=None):
    """``(f, laplacian f)`` at every point, sharing the per-point evaluation."""

    def g(xi, *r):
        def grad_and_val(z):
            return jacrev(lambda w: (f(w, *r), f(w, *r)), has_aux=True)(z)

        h, val = jacfwd(grad_and_val, has_aux=True)(xi)
        return val, torch.diagonal(h).sum()

    return _map(g, x, rows, chunk_size)


def directional_derivative(
    batch_fn, x: torch.Tensor, direction
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch_fn(x), d/dt batch_fn(x + t v))`` for a *row-independent* batched function.

    When row ``i`` of ``batch_fn(x)`` depends on ``x[i]`` only (any network applied to a
    batch of points), one forward-mode JVP with tangent ``v`` (a ``(d,)`` vector or ``(N, d)``
    tensor) gives every row's directional derivative at the cost of about one extra forward
    pass; with ``v = e_j`` that is ``du/dx_j``. This is the cheap route for first derivatives
    in one input (e.g. a DeepONet's trunk coordinate) and it composes with parameter JVPs and
    VJPs (forward-over-forward / reverse-over-forward).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> directional_derivative(lambda z: z[:, :1] ** 2 * z[:, 1:], x, torch.tensor([1.0, 0.0]))[1]
    tensor([[ 4.],
            [24.]])
    """
    _check_points(x)
    v = torch.as_tensor(direction, dtype=x.dtype, device=x.device)
    v = v.expand_as(x) if v.dim() == 1 else v
    if v.shape != x.shape:
        raise ValueError(
            f"direction: expected shape ({x.shape[1]},) or {tuple(x.shape)}, got {tuple(v.shape)}"
        )
    return torch.func.jvp(batch_fn, (x,), (v,))
