"""``refine``: linearize the residual once, hand the problem to a method, wrap the result."""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import time
import warnings

import torch

from .._checks import check_finite_rows, check_generator, check_inputs, real_dtype
from .._progress import PhaseProgress
from .._utils import PeakMemory, timed
from ..losses import as_loss
from ..operators._jacobian import _select_param_names
from ..operators._params import to_precision
from ._krylov import Krylov
from ._legacy import from_legacy
from ._loader import LoaderData, is_loader
from ._loss import refine_with_loss
from ._methods import Method, Problem, Products
from ._model import RefinedModel, _as_tuple
from ._plan import Plan, default_budget, measure, plan_problem
from ._precision import narrow_ops, narrowest
from ._subspace import DTYPE_HINT, Subspace

__all__ = ["refine", "plan", "as_method"]

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


# Set by plan(): refine returns its Plan instead of running it.
_PLAN_ONLY = contextvars.ContextVar("lsr_scale_plan_only", default=False)


def plan(
    model: torch.nn.Module,
    data=None,
    *,
    residual_fn=None,
    method="subspace",
    params=None,
    products: Products | None = None,
    dtype: torch.dtype | None = None,
    memory_budget: int | float | None = None,
    loss="mse",
) -> Plan:
    """What :func:`refine` would run, and its estimated peak memory, without running it.

    Checks the arguments as :func:`refine` does, measures the problem (one forward pass of
    a few rows for ``data=``; one evaluation of ``residual_fn``), estimates the peak and
    adapts the settings that do not fit ``memory_budget``, exactly as :func:`refine` would.
    Nothing of the size of the problem is allocated.

    Parameters
    ----------
    model, data, residual_fn, method, params, products, dtype, memory_budget, loss
        As for :func:`refine` (for ``loss="cross_entropy"``: the plan of one Gauss-Newton
        step). ``data`` must be tensors (a DataLoader is not planned).

    Returns
    -------
    Plan
        ``plan.method`` (the adapted method), ``plan.peak_bytes``, ``plan.parts``,
        ``plan.adapted`` (each change with its reason), ``plan.notes`` and
        ``plan.describe()``.

    Raises
    ------
    MemoryError
        When no setting fits the budget (the message has the estimate by part).

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(),
    ...                           torch.nn.Linear(64, 1))
    >>> x = torch.rand(500, 2)
    >>> p = ls.plan(net, data=(x, x[:, :1]), method=ls.Krylov(), memory_budget=2e9)
    >>> p.peak_bytes < 2e9, p.adapted
    (True, ())
    """
    token = _PLAN_ONLY.set(True)
    try:
        return refine(
            model, data, residual_fn=residual_fn, method=method, params=params,
            products=products, dtype=dtype, memory_budget=memory_budget, progress_bar=False,
            loss=loss,
        )  # fmt: skip
    finally:
        _PLAN_ONLY.reset(token)


def _make_plan(
    method, model, work, inputs, targets, residual_fn, params, products, *, dtype,
    product_dtype, device, budget,
) -> Plan:  # fmt: skip
    """The plan of one refinement (the sizes measured, then :func:`._plan.plan_problem`)."""
    if budget is None:
        budget = default_budget(device)
    elif isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"memory_budget: expected a positive number of bytes, got {budget!r}")
    names = _select_param_names(dict(model.named_parameters()), params)
    theta = {k: v.detach() for k, v in work.named_parameters() if k in names}
    m = sum(v.numel() * (2 if v.is_complex() else 1) for v in theta.values())
    if residual_fn is not None:
        with torch.no_grad():
            f0 = residual_fn(theta)
        if not isinstance(f0, torch.Tensor):
            raise TypeError(f"residual_fn: expected it to return a Tensor, got {type(f0).__name__}")
        n = int(f0.numel())
        rows, act = measure(None, residual_fn=residual_fn, theta=theta)
    else:
        n = int(targets.numel())
        rows, act = measure(work, inputs)
    # activations are counted in the model's dtype; the estimate widens them to the products'
    act *= _size(dtype) / _size(next(iter(theta.values())).dtype)
    unmeasured = act != act  # a residual_fn whose torch.func transforms refuse the count
    out = plan_problem(
        method, m=m, n=n, rows=rows, dtype=dtype, product_dtype=product_dtype,
        device=device, products=products, budget=int(budget), model_copy=work is not model,
        act_row=0.0 if unmeasured else act,
    )  # fmt: skip
    if unmeasured:
        note = "activations not counted: residual_fn runs torch.func transforms that refuse "
        note += "autograd's saved-tensor hooks, which count them"
        out = dataclasses.replace(out, notes=(*out.notes, note))
    return out


def _size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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


def _narrow_ops(model, inputs, dtype) -> dict:
    """:func:`narrow_ops` on a few rows (all of them when the inputs' leading dimensions
    differ), warned when the model rounds below ``dtype``."""
    lead = {t.shape[0] if t.dim() else None for t in inputs if isinstance(t, torch.Tensor)}
    if len(lead) == 1 and None not in lead:
        inputs = tuple(t[:4] if isinstance(t, torch.Tensor) else t for t in inputs)
    found = narrow_ops(model, inputs, dtype)
    if found:
        low = narrowest(found)
        warnings.warn(
            f"refine: the model computes parameter-dependent values in {low} although it "
            f"runs in {dtype} (in {', '.join(sorted(found))}; neuraloperator's SpectralConv "
            f"allocates its spectrum as complex64), so its products are {low}-accurate "
            "there; Krylov stops its preconditioner at that precision's noise floor "
            "(info['narrow_ops'])",
            RuntimeWarning,
            stacklevel=3,
        )
    return found


def _check_data(pair, what: str, dtype, device):
    """Inputs and targets: tensors of the working dtype and device, finite inputs."""
    inputs, targets = pair
    check_inputs(
        inputs, f"{what} inputs" if what != "data" else "inputs", dtype, device, hint=DTYPE_HINT
    )
    name = f"{what} targets" if what != "data" else "targets"
    check_inputs((targets,), name, dtype, device, hint=DTYPE_HINT)
    if not targets.is_floating_point():
        if not targets.is_complex() and targets.dtype != torch.bool:
            raise TypeError(
                f"{name}: expected floating targets for loss='mse', got {targets.dtype} class "
                "labels; pass loss='cross_entropy' or loss='softmax_mse' for a classifier"
            )
        raise TypeError(f"{name}: expected dtype {dtype} (the model's), got {targets.dtype}")
    check_finite_rows(inputs, f"{what} inputs" if what != "data" else "inputs")


LOGIT_SPREAD = 3.0  # median max - min of an output row above which outputs look like logits


def _one_hot_hint(targets: torch.Tensor, b: torch.Tensor) -> None:
    """Warn when ``loss="mse"`` fits one-hot target rows with outputs that look like logits.

    Such outputs (a classifier trained with cross-entropy: rows spread over tens) fitted to 0
    and 1 lose their margins between classes; ``loss="cross_entropy"`` on the labels keeps
    them. The outputs are ``targets - b`` (``b`` is minus the residual): no forward pass.
    """
    if targets.ndim != 2 or targets.shape[1] < 2 or targets.is_complex():
        return
    ones = targets == 1
    if not bool(((targets == 0) | ones).all()) or not bool((ones.sum(1) == 1).all()):
        return
    out = targets - b.reshape(targets.shape).to(targets.dtype)
    spread = float((out.amax(1) - out.amin(1)).median())
    if spread > LOGIT_SPREAD:
        warnings.warn(
            f"targets: every row is one-hot (class labels as 0/1 vectors), and the model's "
            f"output rows spread over {spread:.3g} (median max - min), like the logits of a "
            "classifier trained with cross-entropy; loss='mse' fits them to 0 and 1 and can "
            "lower its test accuracy. For a classifier, pass the integer labels with "
            "loss='cross_entropy' (docs/guide.md, Classification)",
            UserWarning,
            stacklevel=3,
        )


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
    memory_budget: int | float | None = None,
    loss="mse",
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
        the others rather than ignored. With ``loss="cross_entropy"`` it also selects the
        Gauss-Newton step, whatever the method; the classification losses take labels here
        too and report the validation accuracy.
    products : Products, optional
        How Jacobian products are taken (back end, row chunks, column batches); default
        ``Products()``.
    dtype : torch.dtype, optional
        Work in this precision (e.g. ``torch.float64``) on a converted copy of the model.
        ``data`` and ``validation`` are converted with it, and the refined predictor then
        takes and returns this dtype. Not needed for a float64 solve of a float32 model:
        ``Krylov()`` (``precision="auto"``) already takes float64 products on a private copy
        where float64 is fast, and its predictor takes and returns the model's dtype.
    generator : torch.Generator, optional
        The only source of randomness when given; ``None`` uses torch's global RNG.
    progress_bar : bool, optional
        Show progress on stderr: the phase (linearize, the method's phases, check) and its
        count, elapsed time and estimated time left, e.g. ``refine (krylov): LSMR 60/300
        iterations, 14 s, ETA 56 s``. On a terminal one line is redrawn in place (with tqdm
        when installed, else plain lines); otherwise ``True`` prints a plain line when a
        phase starts and every 10 s while it runs. ``None`` (default): only on a terminal,
        and not when the environment variable ``LSR_SCALE_NO_PROGRESS`` is set. ``False``:
        silent.
    memory_budget : int or float, optional
        Bytes the refinement may use (default: half of the memory free on the
        model's device, :func:`lsr_scale.refine._plan.default_budget`). The estimate fills
        at most 95% of it. Settings whose estimate exceeds that are adapted in each
        method's documented order, with one warning, and ``info["adapted"]`` lists each
        change; :func:`lsr_scale.plan` shows the same plan without running. See "Large
        models" in ``docs/guide.md``.
    loss : str or loss object
        What is minimized: ``"mse"`` (the squared error, the default), ``"softmax_mse"``
        (a classifier's softmax outputs against one-hot labels, linearized through the
        softmax; the predictor returns the linearized probabilities), ``"cross_entropy"``
        (softmax cross-entropy on the logits by a few Gauss-Newton steps with a line search;
        the predictor returns logits), or an object of :mod:`lsr_scale.losses` (row
        weights, label smoothing, steps). The classification losses take integer labels
        ``(N,)`` or class probabilities ``(N, C)`` as targets, and report
        ``info["accuracy"]``. See "Classification" in ``docs/guide.md``.
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
    loss = as_loss(loss)
    if not loss.plain:  # refined through refine itself, on a wrapped network
        _check_model(model)  # before any forward pass of the loss's own
        return refine_with_loss(
            refine, loss, model, data, residual_fn=residual_fn, method=method, params=params,
            validation=validation, products=products, dtype=dtype, generator=generator,
            progress_bar=progress_bar, memory_budget=memory_budget, plan_only=_PLAN_ONLY.get(),
        )  # fmt: skip
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
    if validation is None and use == "required" and not _PLAN_ONLY.get():
        raise ValueError(f"validation: expected (inputs, targets) for {method!r}, got None")
    method.check_problem(has_data=data is not None)

    model_dtype, device = _check_model(model)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")
    # the precision the user asked for (dtype=), else the one the method takes products in
    out_dtype = dtype or model_dtype
    if dtype is None and data is not None:
        dtype = method.product_dtype(model_dtype, has_data=True, device=device)
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
    if data is not None and is_loader(data) and _PLAN_ONLY.get():
        raise ValueError(
            "plan: expected data=(inputs, targets) or residual_fn=, got a DataLoader (its "
            "batches are re-read at every product; refine keeps one batch's activations)"
        )
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

    # the plan: estimate, adapt what does not fit the budget (warned), refuse what cannot fit
    the_plan = None
    if loader is None:
        the_plan = _make_plan(
            method, model, work, inputs, targets, residual_fn, params, products,
            dtype=out_dtype, product_dtype=wdtype, device=device, budget=memory_budget,
        )  # fmt: skip
        method, products = the_plan.method, the_plan.products
        if _PLAN_ONLY.get():
            return the_plan
        if the_plan.adapted:
            warnings.warn(
                f"refine: the settings given need more than the memory budget "
                f"({the_plan.budget / 1e9:.2f} GB); adapted "
                + "; ".join(f"{c['setting']} {c['from']} -> {c['to']}" for c in the_plan.adapted)
                + " (info['adapted'] says why; ls.plan(...) shows it before running; pass "
                "memory_budget= to change the budget)",
                RuntimeWarning,
                stacklevel=2,
            )
    times: dict[str, float] = {}
    bar = PhaseProgress(f"refine ({method.name})", progress_bar)
    with bar, PeakMemory(device) as pm:  # the bar's thread stops also on an exception
        stage = bar.stage
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
        if targets is not None:
            _one_hot_hint(targets, b)
        narrow = _narrow_ops(work, inputs, wdtype) if inputs is not None else {}
        problem = Problem(
            J, b, work, inputs, validation, products, generator, stage, model_dtype=out_dtype,
            narrow_dtype=narrowest(narrow),
            plan=the_plan,
        )  # fmt: skip
        delta, info = method.solve(problem)
        times.update(info.pop("times", {}))
        # linearized loss from the returned delta (not the solver's running estimate)
        stage("check")
        with timed(times, "check", device):
            lin_res = J.matvec(delta) - b
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
        narrow_ops=narrow,
        product_check=getattr(J, "product_check", None),
        # global sums when J's rows are sharded over processes (lsr_scale.distributed)
        loss_before=0.5 * float(J.row_norm(b.double()) ** 2),
        loss_linearized=0.5 * float(J.row_norm(lin_res.double()) ** 2),
        times=times,
        peak_mem_bytes=pm.peak_bytes,
        peak_mem_kind=pm.kind,
        # a method that ran larger settings than planned (within the budget) reports their
        # estimate (Subspace(rank="auto")'s rescans)
        memory_estimate=info.pop("memory_estimate", None)
        or (the_plan.parts if the_plan is not None else None),
        adapted=list(the_plan.adapted) if the_plan is not None else [],
        products=products,
        plan_notes=(list(the_plan.notes) if the_plan is not None else [])
        + info.pop("plan_notes", []),
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
