"""A ``torch.nn.Module`` seen as a function of (some of) its parameters.

:func:`module_residual` is the one place that evaluates a module functionally: parameters
and buffers go through ``torch.func.functional_call`` (buffers cloned), so neither the
module's state nor its ``requires_grad`` flags or training mode are touched.
:class:`~lsr_scale.JacobianOperator.from_module` and :func:`module_jvp` both build on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import func as tfunc

from .._checks import check_param_dict, describe
from ._attention import differentiable_attention
from ._params import as_complex, complex_keys, real_view, select_param_names

__all__ = ["module_jvp"]


def check_module_inputs(inputs) -> tuple:
    """``inputs`` as a non-empty tuple of tensors sharing a leading data dimension ``N > 0``."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)) or len(inputs) == 0:
        raise TypeError(
            f"inputs: expected a torch.Tensor or a non-empty tuple of tensors, got "
            f"{describe(inputs)}"
        )
    for j, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"inputs[{j}]: expected a torch.Tensor, got {describe(x)}")
        if x.ndim == 0:
            raise ValueError(f"inputs[{j}]: expected a leading data dimension, got a 0-d tensor")
    N = inputs[0].shape[0]
    for j, x in enumerate(inputs):
        if x.shape[0] != N:
            raise ValueError(
                f"inputs[{j}]: expected leading dimension {N} (that of inputs[0]), "
                f"got shape {tuple(x.shape)}"
            )
    if N == 0:
        raise ValueError("inputs: expected at least one data row, got 0 (empty data)")
    return tuple(inputs)


def module_residual(
    model, inputs: tuple, targets=None, *, frozen, buffers, n_rows=None, targets_shape=None
):
    """``p -> model(*inputs) - targets`` (or the output itself when ``targets`` is None).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : tuple of torch.Tensor
        Passed positionally (one row block of the data, or all of it).
    targets : torch.Tensor, optional
        The targets of these rows.
    frozen : dict of str to torch.Tensor
        Parameters held fixed (detached); the residual's argument supplies the others.
    buffers : dict of str to torch.Tensor
        The module's buffers (detached); cloned at every call, so in-place updates (batch
        norm statistics in train mode) never reach the module.
    n_rows, targets_shape : int and tuple, optional
        The number of data rows and the targets' shape over all row blocks together, for the
        error message (default: this block's).

    Returns
    -------
    callable
        ``residual(p: dict[str, Tensor]) -> Tensor``. It raises ``ValueError`` when the output
        and ``targets`` differ in shape. Callers that transform it run it inside
        :func:`~lsr_scale.operators._attention.differentiable_attention` (math attention
        kernel, no MHA fast path): :class:`~lsr_scale.JacobianOperator` wraps every residual
        in it, and :func:`module_jvp` its one JVP.
    """

    def residual(p):
        bufs = {k: b.clone() for k, b in buffers.items()}
        out = tfunc.functional_call(model, ({**frozen, **p}, bufs), inputs)
        if targets is None:
            return out
        if out.shape != targets.shape:
            want = tuple(out.shape)
            if out.ndim and n_rows is not None:
                want = (n_rows,) + want[1:]
            got = tuple(targets.shape) if targets_shape is None else tuple(targets_shape)
            raise ValueError(f"targets: expected the model output's shape {want}, got {got}")
        return out - targets

    return residual


def module_jvp(
    model: torch.nn.Module,
    inputs,
    tangents: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output and its directional derivative along ``tangents``.

    Returns ``(q(theta, x), J_q(x) t)`` with one ``torch.func.jvp``: the linear predictor
    ``q(theta0, x) + J_q(x) delta`` of a refined model on new inputs.

    Parameters
    ----------
    model : torch.nn.Module
        Not mutated (buffers are cloned into ``torch.func.functional_call``).
    inputs : torch.Tensor or tuple of torch.Tensor
        Passed positionally.
    tangents : dict of str to torch.Tensor
        Direction, over a subset of the model's parameter names (others held fixed), each of
        its parameter's shape and dtype: complex for a complex parameter, whose real and
        imaginary parts move as two real parameters (the derivative is taken through
        ``torch.view_as_real`` pairs, as in :class:`~lsr_scale.JacobianOperator`).
    params : dict of str to torch.Tensor, optional
        Values replacing some parameters (default: the model's own, ``theta0``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The output and its JVP, both of the model output's shape.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import module_jvp
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> out, dout = module_jvp(lin, torch.tensor([[3.0, 4.0]]),
    ...                        {"weight": torch.tensor([[1.0, 0.0]])})
    >>> out.detach(), dout
    (tensor([[11.]]), tensor([[3.]]))
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f"inputs: expected a tensor or a tuple of tensors, got {describe(inputs)}")
    all_params = {k: v.detach() for k, v in model.named_parameters()}
    if params is not None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of str -> Tensor, got {describe(params)}")
        select_param_names(all_params, list(params))
        all_params.update({k: v.detach() for k, v in params.items()})
    tangents = check_param_dict(tangents, "tangents")
    select_param_names(all_params, list(tangents), "tangents")
    for k, t in tangents.items():
        ref = all_params[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise ValueError(
                f"tangents[{k!r}]: expected shape {tuple(ref.shape)} and dtype {ref.dtype}, "
                f"got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
    primals = {k: all_params[k] for k in tangents}
    frozen = {k: v for k, v in all_params.items() if k not in tangents}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    f = module_residual(model, tuple(inputs), frozen=frozen, buffers=buffers)
    keys = complex_keys(primals)
    with differentiable_attention():  # attention kernels that forward mode can take
        if not keys:
            return tfunc.jvp(f, (primals,), (dict(tangents),))

        def f_real(p):  # complex parameters as (real, imaginary) pairs: a real-linear JVP
            return f(as_complex(p, keys))

        return tfunc.jvp(f_real, (real_view(primals),), (real_view(tangents),))
