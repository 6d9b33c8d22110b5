"""``refine``: linearize the residual once, hand the problem to a method, wrap the result."""

from __future__ import annotations

import copy
import time

import torch

from .._checks import check_finite_rows, check_generator, check_inputs, real_dtype
from .._utils import PeakMemory, progress, timed
from ..operators._jacobian import _select_param_names
from ..operators._params import to_precision
from ._krylov import Krylov
from ._legacy import from_legacy
from ._loader import LoaderData, is_loader
from ._memory import preflight
from ._methods import Method, Problem, Products
from ._model import RefinedModel, _as_tuple
from ._subspace import DTYPE_HINT, Subspace

__all__ = ["refine", "as_method"]

_SHORTHANDS = {"subspace": Subspace, "krylov": Krylov}


def as_method(method) -> Method:
    """A method object from ``method=``: a :class:`Method` instance or a shorthand name."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in _SHORTHANDS:
        return _SHORTHANDS[method]()
    if isinstance(method, type) and issubclass(method, Method):
        raise TypeError(
            f"method: expected a method object such as ls.{method.__name__}(), "
            f"got the class {method.__name__}"
        )
    raise ValueError(
        f"method: expected 'subspace', 'krylov' or a method object (ls.Subspace(...), "
        f"ls.Krylov(...)), got {method!r}"
    )


def _check_model(model):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError("model: expected a module with parameters, got one with none")
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.training:
            raise ValueError(
                f"model: expected batch-norm layers in eval mode (in train mode their outputs "
                f"depend on the batch), got {name or type(model).__name__} "
                f"({type(mod).__name__}) in train mode; call model.eval()"
            )
    return real_dtype(p.dtype), p.device  # a complex parameter counts as its real pair


def _check_data(pair, what: str, dtype, device):
    """Inputs and targets: tensors of the working dtype and device, finite inputs."""
    inputs, targets = pair
    check_inputs(
        inputs, f"{what} inputs" if what != "data" else "inputs", dtype, device, hint=DTYPE_HINT
    )
    name = f"{what} targets" if what != "data" else "targets"
    check_inputs((targets,), name, dtype, device, hint=DTYPE_HINT)
    if not targets.is_floating_point():
        raise TypeError(f"{name}: expected dtype {dtype} (the model's), got {targets.dtype}")
    check_finite_rows(inputs, f"{what} inputs" if what != "data" else "inputs")


def _check_pair(value, what: str):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"{what}: expected a pair (inputs, targets), got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        )
    return _as_tuple(value[0]), value[1]


def refine(
    model: torch.nn.Module,
    data=None,
    *,
    residual_fn=None,
    method="subspace",
    params=None,
    validation=None,
    products: Products | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    progress_bar: bool | None = None,
    **legacy,
) -> RefinedModel:
    """Refine a trained network by solving its linearized least-squares problem.

    Linearize the residual at the trained weights, ``f(theta0 + delta) ~ f0 + G0 delta``,
    and solve ``min ||G0 delta + f0||`` without forming ``G0``. Returns the linear predictor
    ``q(theta0, x) + J_q(x) delta`` as a :class:`RefinedModel`.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network. It is never modified.
    data : (inputs, targets) or DataLoader, optional
        Supervised data: residual ``model(*inputs) - targets``. ``inputs`` is a tensor or a
        tuple of tensors passed positionally (a DeepONet takes ``(branch, trunk)``). Data that
        does not fit in memory: a ``torch.utils.data.DataLoader`` of ``(inputs, targets)``
        batches; each batch is a row block, re-read from the dataset at every product (no
        activations cached; the batch order is fixed once).
    residual_fn : callable, optional
        Instead of ``data``: ``residual_fn(params) -> Tensor`` for a dict of the selected
        parameters (by name), typically through ``torch.func.functional_call(model, params,
        x)``. Physics-informed residuals go here.
    method : Subspace, Krylov, "subspace" or "krylov"
        How to solve, with its settings: :class:`~lsr_scale.Subspace` (one-shot LSR, the
        default) or :class:`~lsr_scale.Krylov` (matrix-free preconditioned LSMR). The
        strings mean the default objects.
    params : iterable of str, optional
        Names of the parameters to refine (default: all that require grad).
    validation : (inputs, targets), optional
        Held-out data, for the methods that use it (``Subspace(rank="auto")``); refused by
        the others rather than ignored.
    products : Products, optional
        How Jacobian products are taken (back end, row chunks, column batches); default
        ``Products()``.
    dtype : torch.dtype, optional
        Work in this precision (e.g. ``torch.float64``) on a converted copy of the model.
        ``data`` and ``validation`` are converted with it.
    generator : torch.Generator, optional
        The only source of randomness when given; ``None`` uses torch's global RNG.
    progress_bar : bool, optional
        Show progress (default: only when stderr is a terminal).
    **legacy
        The 0.1 keywords (``rank=``, ``maxiter=``, ``precond_rank=`` ...), mapped onto the
        method objects with a ``DeprecationWarning`` that shows the new call. Removed in 0.3.

    Returns
    -------
    RefinedModel
        ``refined(x)`` is the linear predictor; ``refined.info`` holds ``method`` (its
        name), ``settings`` (the method object used), ``times`` (seconds per phase),
        ``peak_mem_bytes``, ``rank``, ``num_jvp``/``num_vjp`` (column products), ``solver``,
        ``preconditioner`` and ``product_check`` (what the products' self-check measured and
        any back end it changed; see :class:`~lsr_scale.Products`).

    Raises
    ------
    ValueError, TypeError
        Before any work: invalid or inapplicable settings, empty data, mismatched
        shapes/dtypes/devices. While linearizing: non-finite residuals, parameters that do
        not affect the residual, nondeterministic models, or a rank larger than
        ``min(n, m)``.

    Notes
    -----
    The refined predictor is linear in delta: it is not the network at ``theta0 + delta``
    (available through :meth:`RefinedModel.to_network`), which is usually much less
    accurate.

    References
    ----------
    W. Cao and W. Zhang, "A universal linearized subspace refinement framework for neural
    networks", arXiv:2601.13989 (2026).

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(200, 1, generator=g, dtype=torch.float64)
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(),
    ...                           torch.nn.Linear(16, 1)).double()
    >>> refined = ls.refine(net, data=(x, torch.sin(3 * x)), method=ls.Subspace(rank=40),
    ...                     generator=g)
    >>> err = (refined(x) - torch.sin(3 * x)).norm() / torch.sin(3 * x).norm()
    >>> bool(err < 1e-2)
    True
    """
    t_start = time.perf_counter()
    method, products = from_legacy(method, products, legacy)
    method = as_method(method)
    if products is None:
        products = Products()
    elif not isinstance(products, Products):
        raise TypeError(f"products: expected ls.Products(...) or None, got {products!r}")
    check_generator(generator)
    if (data is None) == (residual_fn is None):
        raise ValueError(
            "refine: expected exactly one of data=(inputs, targets) or residual_fn=..., got "
            + ("both" if data is not None else "neither")
        )
    if residual_fn is not None and products.chunk_size is not None:
        raise ValueError(
            "Products.chunk_size: applies to data= refinements (a residual_fn chooses its own "
            "rows), got it with residual_fn"
        )
    use = method.validation_use()
    if validation is not None and use == "unused":
        raise ValueError(
            f"validation: not used by {method!r}; pass it with ls.Subspace(rank='auto') or "
            "ls.Krylov(), or leave it out"
        )
    if validation is None and use == "required":
        raise ValueError(f"validation: expected (inputs, targets) for {method!r}, got None")
    method.check_problem(has_data=data is not None)

    model_dtype, device = _check_model(model)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")
    # the precision the user asked for (dtype=), else the one the method takes products in
    out_dtype = dtype or model_dtype
    if dtype is None and data is not None:
        dtype = method.product_dtype(model_dtype, has_data=True)
    work = model
    if dtype is not None and dtype != model_dtype:
        if residual_fn is not None:
            raise ValueError(
                f"dtype: expected the model's dtype {model_dtype} with residual_fn (it closes over "
                f"your model), got {dtype}; convert the model yourself"
            )
        work = to_precision(copy.deepcopy(model), dtype)  # keeps complex parameters complex
    wdtype = dtype or model_dtype

    def convert(t):
        # only when refine itself changes the precision (dtype=): otherwise a dtype mismatch
        # is the user's to fix, and check_inputs names it
        if work is model or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return t.to(wdtype)

    inputs = targets = probe = None
    loader = None
    if data is not None and is_loader(data):  # row blocks re-read from the dataset
        if products.chunk_size is not None:
            raise ValueError(
                "Products.chunk_size: applies to tensor data=, got it with a DataLoader (its "
                "batches are the row blocks)"
            )
        loader = LoaderData(data, convert)
        probe = loader.check(wdtype, device, _check_data)
    elif data is not None:
        inputs, targets = _check_pair(data, "data")
        inputs, targets = tuple(convert(x) for x in inputs), convert(targets)
        _check_data((inputs, targets), "data", wdtype, device)
        probe = inputs
    if validation is not None:
        v_in, v_tgt = _check_pair(validation, "validation")
        validation = tuple(convert(x) for x in v_in), convert(v_tgt)
        _check_data(validation, "validation", wdtype, device)

    mem = None
    if inputs is not None:  # estimate; refuse what cannot fit; batch and chunk from free memory
        products, mem = preflight(method, work, inputs, targets, products)
    bar = progress(
        total=2 + method.stages,
        desc=f"refine ({method.name})",
        disable=None if progress_bar is None else not progress_bar,
    )
    times: dict[str, float] = {}
    opened = []

    def stage(text):
        if opened:
            bar.update(1)
        opened.append(text)
        bar.set_description(f"refine ({method.name}): {text}")

    with PeakMemory(device) as pm:
        stage("linearize")
        with timed(times, "linearize", device):
            if loader is not None:
                J = loader.jacobian(work, params, products)
            elif data is not None:
                J = products.jacobian(work, inputs, targets, params=params)
            else:
                names = _select_param_names(dict(model.named_parameters()), params)
                theta = {k: v.detach() for k, v in model.named_parameters() if k in names}
                J = products.residual_jacobian(residual_fn, theta)
        b = -J.residual
        problem = Problem(J, b, work, inputs, validation, products, generator, stage)
        delta, info = method.solve(problem)
        times.update(info.pop("times", {}))
        # linearized loss from the returned delta (not the solver's running estimate)
        stage("check")
        with timed(times, "check", device):
            lin_res = J.matvec(delta) - b
    bar.update(1)
    bar.close()
    n, m = J.shape
    times["total"] = time.perf_counter() - t_start
    info.update(
        method=method.name,
        settings=method,
        dtype=str(out_dtype),
        product_dtype=str(wdtype),
        device=str(device),
        n_rows=n,
        n_params=m,
        param_names=list(J.param_names),
        jvp_mode=J.jvp_mode,
        product_check=getattr(J, "product_check", None),
        # global sums when J's rows are sharded over processes (lsr_scale.distributed)
        loss_before=0.5 * float(J.row_norm(b.double()) ** 2),
        loss_linearized=0.5 * float(J.row_norm(lin_res.double()) ** 2),
        times=times,
        peak_mem_bytes=pm.peak_bytes,
        peak_mem_kind=pm.kind,
        memory_estimate=mem.parts if mem is not None else None,
        num_jvp=J.num_matvecs,
        num_vjp=J.num_rmatvecs,
    )
    info.setdefault("rank", None)
    # when the method chose a wider product precision than the model's, the predictor is
    # evaluated in it (rounding delta to the model's dtype would cost accuracy) and takes and
    # returns the model's dtype (RefinedModel.io_dtype)
    frozen = work if work is not model else copy.deepcopy(model)
    return RefinedModel(
        frozen, J.param_names, delta.detach(), info, probe_inputs=probe, io_dtype=out_dtype
    )
