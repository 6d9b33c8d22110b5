"""``refine(..., loss=...)`` for losses other than plain squared error.

Each loss is refined through :func:`refine` itself, on a private module wrapping the network
(:class:`_OutputMap`) whose output minus the targets is the least-squares residual:

- weighted rows: ``sqrt(w_i) q(x_i)`` against ``sqrt(w_i) y_i``;
- ``softmax_mse``: ``softmax(q(x_i))`` against one-hot labels or class probabilities;
- ``cross_entropy``: per Gauss-Newton step, ``L_i^T q(x_i)`` against ``L_i^T q0_i - c_i``
  (see :mod:`lsr_scale.losses`), so that the residual at the linearization point is ``c_i``
  and its Jacobian is ``L_i^T J_i``.

The per-row factors (``s_i = sqrt(p_i)``, ``sqrt(w_i)``) travel as extra inputs of the
wrapper, so row blocks, the plan and both methods see an ordinary ``data=`` problem. The
result is unwrapped into a :class:`RefinedModel` of the user's network.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call

from .._checks import check_finite_rows, check_inputs, real_dtype
from ..losses import (
    MSE,
    CrossEntropy,
    SoftmaxMSE,
    class_targets,
    cross_entropy,
    factor_t_apply,
    gauss_newton_rows,
    smooth,
)
from ..operators._params import select_param_names, to_precision
from ._loader import is_loader
from ._model import RefinedModel, _as_tuple
from ._plan import Plan
from ._subspace import DTYPE_HINT, Subspace

__all__ = ["refine_with_loss"]

_PREFIX = "net."  # the wrapped network's attribute name, prefixed to its parameter names
_EVAL_ROWS = 4096  # rows per forward pass when evaluating losses


class _OutputMap(torch.nn.Module):
    """The network followed by a per-row map of its output ``(N, ...)``.

    ``kind``: ``"identity"``, ``"softmax"`` (over the last dimension) or ``"gauss_newton"``
    (``z -> s * (z - (s**2 * z).sum(-1))``, the transposed factor ``L^T`` of the
    cross-entropy Hessian, with ``s`` an extra input). With ``weighted``, the last input is
    ``sqrt(w)`` of shape ``(N,)``, which scales each row.
    """

    def __init__(self, net: torch.nn.Module, kind: str, weighted: bool):
        super().__init__()
        self.net = net
        self.kind = kind
        self.weighted = weighted

    def forward(self, *args):
        if self.weighted:
            *args, sw = args
        if self.kind == "gauss_newton":
            *args, s = args
        out = self.net(*args)
        if self.kind == "softmax":
            out = torch.softmax(out, dim=-1)
        elif self.kind == "gauss_newton":
            out = factor_t_apply(s, out)
        if self.weighted:
            out = out * sw.reshape(-1, *([1] * (out.ndim - 1)))
        return out


def _pair(value, what: str):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"{what}: expected a pair (inputs, targets), got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        )
    return _as_tuple(value[0]), value[1]


def _forward(net, xs, params=None) -> torch.Tensor:
    """``net(*xs)`` without gradients, ``_EVAL_ROWS`` rows at a time (``params`` replace some
    parameters)."""
    n = xs[0].shape[0]
    outs = []
    with torch.no_grad():
        for i in range(0, n, _EVAL_ROWS):
            chunk = tuple(x[i : i + _EVAL_ROWS] for x in xs)
            outs.append(net(*chunk) if params is None else functional_call(net, params, chunk))
    return torch.cat(outs)


def _predict(refined, xs) -> torch.Tensor:
    return refined.predict(xs, batch_size=_EVAL_ROWS)


def _scores(logits, probs, labels, weights=None) -> tuple[float, float]:
    """(mean cross-entropy, weighted by ``weights`` when given; accuracy)."""
    ce = cross_entropy(logits.to(probs.dtype), probs)
    loss = ce.mean() if weights is None else (weights * ce).sum() / weights.sum()
    acc = (logits.argmax(-1) == labels).to(torch.float64).mean()
    return float(loss), float(acc)


def _accuracy(out, labels) -> float:
    return float((out.argmax(-1) == labels).to(torch.float64).mean())


def refine_with_loss(
    refine, loss, model, data, *, residual_fn, method, params, validation, products, dtype,
    generator, progress_bar, memory_budget, plan_only,
):  # fmt: skip
    """:func:`refine` for a loss object that is not plain squared error (see the module)."""
    t_start = time.perf_counter()
    if residual_fn is not None:
        raise ValueError(
            f"loss: expected data=(inputs, targets) with loss={loss.name!r}, got residual_fn= "
            "(it defines its own residual: weight or transform it there)"
        )
    if data is None:
        raise ValueError("refine: expected exactly one of data=(inputs, targets) or "
                         "residual_fn=..., got neither")  # fmt: skip
    if is_loader(data):
        raise ValueError(
            f"data: expected tensors (inputs, targets) with loss={loss.name!r}, got a DataLoader "
            "(only the plain squared error reads batches from a DataLoader)"
        )
    if isinstance(method, Subspace) and method.subspace_inputs is not None:
        raise ValueError(
            f"Subspace.subspace_inputs: applies to loss='mse' without weights, got it with {loss!r}"
        )
    p0 = next(iter(model.parameters()))  # refine checked the model
    model_dtype, device = real_dtype(p0.dtype), p0.device
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")
    wdtype = dtype or model_dtype
    work = model if wdtype == model_dtype else to_precision(copy.deepcopy(model), wdtype)

    def convert(t):
        if work is model or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return t.to(wdtype)

    xs, targets = _pair(data, "data")
    xs = tuple(convert(x) for x in xs)
    check_inputs(xs, "inputs", wdtype, device, hint=DTYPE_HINT)
    check_finite_rows(xs, "inputs")
    n_rows = xs[0].shape[0]
    val = None
    if validation is not None:
        v_in, v_tgt = _pair(validation, "validation")
        v_in = tuple(convert(x) for x in v_in)
        check_inputs(v_in, "validation inputs", wdtype, device, hint=DTYPE_HINT)
        check_finite_rows(v_in, "validation inputs")
        val = (v_in, convert(v_tgt))
    sw = None
    if loss.weights is not None:
        if loss.weights.shape[0] != n_rows:
            raise ValueError(
                f"{type(loss).__name__}.weights: expected shape ({n_rows},), one weight per data "
                f"row, got {tuple(loss.weights.shape)}"
            )
        sw = loss.weights.to(device=device, dtype=wdtype).sqrt()
    names = select_param_names(dict(model.named_parameters()), params)
    inner_params = None if params is None else [_PREFIX + k for k in names]
    common = dict(
        method=method, params=inner_params, products=products, dtype=None,
        generator=generator, progress_bar=progress_bar, memory_budget=memory_budget,
    )  # fmt: skip

    if isinstance(loss, MSE):
        targets = convert(targets)
        if isinstance(targets, torch.Tensor) and not targets.is_floating_point():
            raise TypeError(_int_message("targets", targets, loss.name))
        wrapper = _OutputMap(work, "identity", weighted=True)
        scaled = targets * sw.reshape(-1, *([1] * (targets.ndim - 1)))
        inner_val = None
        if val is not None:  # validation rows are not weighted
            ones = torch.ones(val[0][0].shape[0], dtype=wdtype, device=device)
            inner_val = ((*val[0], ones), val[1])
        r = refine(wrapper, ((*xs, sw), scaled), validation=inner_val, **common)
        if isinstance(r, Plan):
            return r
        out = _unwrap(r, len(xs), r.delta, r.info, output=None)
        _finish(out.info, loss, t_start)
        return out

    # the classification losses: (N, C) logits
    with torch.no_grad():
        probe = work(*(x[:1] for x in xs))
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ValueError(
            f"model: expected outputs of shape (N, C) (class logits) for loss={loss.name!r}, "
            f"got {got} for one row"
        )
    n_classes = probe.shape[1]
    probs, labels = class_targets(convert(targets), n_rows, n_classes, wdtype, device, "targets")
    if val is not None:
        nv = val[0][0].shape[0]
        v_probs, v_labels = class_targets(
            val[1], nv, n_classes, wdtype, device, "validation targets"
        )
        val = (val[0], v_probs, v_labels)
    if isinstance(loss, SoftmaxMSE):
        return _softmax_mse(
            refine, loss, work, xs, probs, labels, val, sw, common, plan_only, t_start
        )
    assert isinstance(loss, CrossEntropy)
    return _cross_entropy(
        refine, loss, work, xs, probs, labels, val, sw, common, plan_only, t_start
    )


def _int_message(name, targets, loss_name) -> str:
    return (
        f"{name}: expected floating targets for loss={loss_name!r}, got {targets.dtype} class "
        "labels; pass loss='cross_entropy' or loss='softmax_mse' for a classifier"
    )


def _unwrap(r, n_inputs: int, delta, info, *, output, network_delta=None) -> RefinedModel:
    """The user's network inside the wrapper ``r.model``, with the unprefixed names."""
    names = [k.removeprefix(_PREFIX) for k in r.param_names]
    info = dict(info)
    info["param_names"] = names
    probe = None if r._probe_inputs is None else r._probe_inputs[:n_inputs]
    return RefinedModel(
        r.model.net,
        names,
        delta,
        info,
        probe_inputs=probe,
        io_dtype=r.io_dtype,
        output=output,
        network_delta=network_delta,
    )


def _finish(info, loss, t_start) -> None:
    info["loss"] = loss.name
    info["loss_settings"] = loss
    info.setdefault("times", {})["total"] = time.perf_counter() - t_start


def _weights_of(sw):
    return None if sw is None else sw * sw


def _softmax_mse(refine, loss, work, xs, probs, labels, val, sw, common, plan_only, t_start):
    wrapper = _OutputMap(work, "softmax", weighted=sw is not None)
    inputs = xs if sw is None else (*xs, sw)
    targets = probs if sw is None else probs * sw[:, None]
    inner_val = None
    if val is not None:
        v_in, v_probs, _ = val
        ones = torch.ones(v_in[0].shape[0], dtype=probs.dtype, device=probs.device)
        inner_val = (v_in if sw is None else (*v_in, ones), v_probs)
    r = refine(wrapper, (inputs, targets), validation=inner_val, **common)
    if isinstance(r, Plan):
        return r
    out = _unwrap(r, len(xs), r.delta, r.info, output="softmax")
    before = {"train": _accuracy(_forward(work, xs), labels)}
    after = {"train": _accuracy(_predict(out, xs), labels)}
    if val is not None:
        before["validation"] = _accuracy(_forward(work, val[0]), val[2])
        after["validation"] = _accuracy(_predict(out, val[0]), val[2])
    out.info.update(accuracy_before=before, accuracy=after)
    _finish(out.info, loss, t_start)
    return out


def _cross_entropy(refine, loss, work, xs, probs, labels, val, sw, common, plan_only, t_start):
    """Gauss-Newton steps, each a least-squares refine of the wrapped network."""
    train_probs = smooth(probs, loss.label_smoothing)
    weights = _weights_of(sw)
    weighted = sw is not None
    use_val = not plan_only and val is not None and common["method"].validation_use() != "unused"
    net = work
    steps: list[dict] = []
    kept = None  # (RefinedModel, step) of the predictor kept so far
    logits = None if plan_only else _forward(net, xs)
    loss_now, acc_now = (None, None) if plan_only else _scores(logits, train_probs, labels, weights)
    before = {"train_loss": loss_now, "train_accuracy": acc_now}
    best = loss_now
    if val is not None and not plan_only:
        before["validation_loss"], before["validation_accuracy"] = _scores(
            _forward(net, val[0]), val[1], val[2]
        )
        best = before["validation_loss"]
    totals = {"times": {}, "num_jvp": 0, "num_vjp": 0, "peak_mem_bytes": 0}
    first = None
    stop = f"ran the {loss.steps} steps"
    for k in range(1, loss.steps + 1):
        t0 = time.perf_counter()
        if plan_only:  # only the sizes matter: uniform probabilities, no pass over the data
            n_classes = probs.shape[1]
            s = torch.full_like(probs, n_classes**-0.5)
            rows = torch.zeros_like(probs)
        else:
            s, c = gauss_newton_rows(logits, train_probs, loss.floor)
            rows = factor_t_apply(s, logits) - c
        wrapper = _OutputMap(net, "gauss_newton", weighted=weighted)
        inputs = (*xs, s) if not weighted else (*xs, s, sw)
        if weighted:
            rows = rows * sw[:, None]
        inner_val = None
        if use_val:
            v_logits = _forward(net, val[0])
            sv, cv = gauss_newton_rows(v_logits, val[1], loss.floor)
            ones = torch.ones(sv.shape[0], dtype=sv.dtype, device=sv.device)
            v_inputs = (*val[0], sv) if not weighted else (*val[0], sv, ones)
            inner_val = (v_inputs, factor_t_apply(sv, v_logits) - cv)
        r = refine(wrapper, (inputs, rows), validation=inner_val, **common)
        if isinstance(r, Plan):
            return r
        if first is None:
            first = r
        _accumulate(totals, r.info)
        t_ls = time.perf_counter()
        # the step's predictor: the linearized logits z + t J d, t chosen on their loss
        dz = _predict(_unwrap(r, len(xs), r.delta, r.info, output=None), xs) - logits
        t_lin = _linear_step(logits, dz, train_probs, weights)
        cand = _unwrap(r, len(xs), t_lin * r.delta, r.info, output=None)
        entry = {"step": k, "t": t_lin, "rank": r.info.get("rank")}
        entry["train_loss"], entry["train_accuracy"] = _scores(
            logits + t_lin * dz, train_probs, labels, weights
        )
        # the next point: the network at theta + t d, t by backtracking on its true loss
        base = {n: p.detach() for n, p in net.named_parameters()}
        direction = {
            n.removeprefix(_PREFIX): d.to(base[n.removeprefix(_PREFIX)].dtype)
            for n, d in r.delta_dict.items()
        }
        moved = None
        for j in range(loss.backtracks + 1):
            t = 2.0**-j
            trial = {n: base[n] + t * d for n, d in direction.items()}
            trial_logits = _forward(net, xs, trial)
            trial_loss, trial_acc = _scores(trial_logits, train_probs, labels, weights)
            if trial_loss < loss_now:
                moved = (t, trial, trial_logits, trial_loss, trial_acc)
                break
        if moved is not None:
            entry["network_t"] = moved[0]
            entry["network_train_loss"], entry["network_train_accuracy"] = moved[3:]
        if val is not None:
            entry["validation_loss"], entry["validation_accuracy"] = _scores(
                _predict(cand, val[0]), val[1], val[2]
            )
            if moved is not None:
                entry["network_validation_loss"], entry["network_validation_accuracy"] = _scores(
                    _forward(net, val[0], moved[1]), val[1], val[2]
                )
        totals["times"]["line_search"] = totals["times"].get("line_search", 0.0) + (
            time.perf_counter() - t_ls
        )
        entry["time_s"] = time.perf_counter() - t0
        steps.append(entry)
        score = entry["train_loss"] if val is None else entry["validation_loss"]
        if not score < best:
            what = "training" if val is None else "validation"
            stop = f"step {k}: the {what} loss did not improve on step {kept[1] if kept else 0}"
            break
        t_net = 0.0 if moved is None else moved[0]
        cand.network_delta = t_net * r.delta
        kept, best = (cand, k), score
        if moved is None:
            stop = (
                f"step {k}: no step length down to 2**-{loss.backtracks} lowered the network's loss"
            )
            break
        if k < loss.steps:  # the next linearization point: the network at theta_k
            _, trial, logits, loss_now, acc_now = moved
            net = copy.deepcopy(net)
            with torch.no_grad():
                for n, p in net.named_parameters():
                    if n in trial:
                        p.copy_(trial[n])
    if kept is None:  # no step helped: the trained network itself (delta = 0)
        kept = (_unwrap(first, len(xs), torch.zeros_like(first.delta), first.info, output=None), 0)
    out, k_kept = kept
    info = out.info
    info.update(totals)
    info["times"] = {**totals["times"]}
    info["steps"] = steps
    info["selected_step"] = k_kept
    info["steps_stop"] = stop
    after_entry = next((e for e in steps if e["step"] == k_kept), None)
    if after_entry is None:
        after = {"train_loss": before["train_loss"], "train_accuracy": before["train_accuracy"]}
        if val is not None:
            after["validation_loss"] = before["validation_loss"]
            after["validation_accuracy"] = before["validation_accuracy"]
    else:
        after = {key: after_entry[key] for key in before}
    info["loss_before"] = before["train_loss"]
    info["loss_linearized"] = after["train_loss"]
    info["accuracy_before"] = {"train": before["train_accuracy"]}
    info["accuracy"] = {"train": after["train_accuracy"]}
    if val is not None:
        info["accuracy_before"]["validation"] = before["validation_accuracy"]
        info["accuracy"]["validation"] = after["validation_accuracy"]
        info["validation_loss_before"] = before["validation_loss"]
        info["validation_loss"] = after["validation_loss"]
    _finish(info, loss, t_start)
    return out


def _linear_step(z, dz, probs, weights, iters: int = 30) -> float:
    """The ``t`` in ``[0, 1]`` minimizing the cross-entropy of the logits ``z + t dz``.

    The loss is convex in ``t``; its derivative ``mean((softmax(z + t dz) - y) . dz)`` is
    bisected (``1`` when the loss still falls at ``t = 1``; ``0`` when it rises at 0).
    """
    dz = dz.to(probs.dtype)
    z = z.to(probs.dtype)

    def slope(t):
        g = ((torch.softmax(z + t * dz, dim=-1) - probs) * dz).sum(-1)
        return float(g.mean() if weights is None else (weights * g).sum() / weights.sum())

    if slope(1.0) <= 0:
        return 1.0
    if slope(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
    return lo


def _accumulate(totals, info) -> None:
    for key, value in info.get("times", {}).items():
        totals["times"][key] = totals["times"].get(key, 0.0) + value
    totals["num_jvp"] += info.get("num_jvp", 0)
    totals["num_vjp"] += info.get("num_vjp", 0)
    totals["peak_mem_bytes"] = max(totals["peak_mem_bytes"], info.get("peak_mem_bytes") or 0)
