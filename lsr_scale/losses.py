"""The losses :func:`lsr_scale.refine` can refine a network for (``refine(..., loss=...)``).

- :class:`MSE`: squared error ``sum_i w_i ||q(theta, x_i) - y_i||^2`` (the default;
  regression, operator learning, physics-informed residuals).
- :class:`SoftmaxMSE`: squared error of the softmax outputs of a classifier against one-hot
  labels or class probabilities, linearized through the softmax (the route of Cao & Zhang's
  classification experiment).
- :class:`CrossEntropy`: softmax cross-entropy on the logits, by a few generalized
  Gauss-Newton steps, each a linear least-squares problem in the same Jacobian operators.

The strings ``"mse"``, ``"softmax_mse"`` and ``"cross_entropy"`` mean the default objects.

The Gauss-Newton factor
-----------------------
For one data row with softmax probabilities ``p`` (summing to 1) and ``s = sqrt(p)``, the
Hessian of the cross-entropy with respect to the logits is ``H = diag(p) - p p^T``, and

    L = diag(s) - p s^T    has    L L^T = diag(p) - 2 p p^T + (s^T s) p p^T = H.

``L^T z = s * (z - p^T z)`` costs O(C) per row, and ``c = (p - y) / s`` solves ``L c = g``
for the gradient ``g = p - y`` (which sums to 0): ``L c = g - p sum(g) = g``. The
Gauss-Newton model of the loss, ``g^T J d + d^T J^T H J d / 2``, is then
``||L^T J d + c||^2 / 2`` up to a constant: a least-squares problem with Jacobian ``L^T J``
and residual ``c``. Nothing C x C is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._checks import check_nonnegative_int, check_positive_int

__all__ = ["MSE", "SoftmaxMSE", "CrossEntropy", "as_loss"]


def _check_weights(weights, owner: str):
    if weights is None:
        return
    name = f"{owner}.weights"
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape (N,) or None, got {type(weights)}")
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(
            f"{name}: expected a tensor of shape (N,), one weight per data row, got shape "
            f"{tuple(weights.shape)}"
        )
    if not weights.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {weights.dtype}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name}: expected finite weights >= 0, got some negative or non-finite")
    if not bool((weights > 0).any()):
        raise ValueError(f"{name}: expected at least one positive weight, got all zero")


class Loss:
    """Base of the loss objects (frozen dataclasses with a ``name`` and ``weights``)."""

    name = "loss"
    weights: torch.Tensor | None = None

    @property
    def plain(self) -> bool:
        """Whether this is today's unweighted squared error (refined without wrapping)."""
        return False


@dataclass(frozen=True)
class MSE(Loss):
    """Squared error of the model outputs against the targets (the default).

    Parameters
    ----------
    weights : torch.Tensor of shape (N,), optional
        A weight ``w_i >= 0`` per data row: the residual of row ``i`` is scaled by
        ``sqrt(w_i)``, so the refinement minimizes ``sum_i w_i ||q(x_i) - y_i||^2``. Converted
        to the precision ``refine`` works in. Validation rows are not weighted.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> w = torch.ones(100)
    >>> w[:10] = 4.0                 # the first ten rows count four times
    >>> loss = ls.losses.MSE(weights=w)
    """

    weights: torch.Tensor | None = field(default=None, repr=False, compare=False)
    name = "mse"

    def __post_init__(self):
        _check_weights(self.weights, "MSE")

    @property
    def plain(self) -> bool:
        return self.weights is None


@dataclass(frozen=True)
class SoftmaxMSE(Loss):
    """Squared error of a classifier's softmax outputs against its labels.

    The residual of row ``i`` is ``softmax(q(theta, x_i)) - y_i``, with ``y_i`` the one-hot
    vector of an integer label or a row of class probabilities; ``q`` returns logits of
    shape ``(N, C)``. It is linearized through the softmax, so the refined predictor returns
    the linearized probabilities ``p0(x) + J_p(x) delta`` (rows sum to 1; entries may leave
    ``[0, 1]``), and :meth:`~lsr_scale.RefinedModel.to_network` returns the network at
    ``theta0 + delta`` as it is (logits; apply the softmax yourself).

    Parameters
    ----------
    weights : torch.Tensor of shape (N,), optional
        A weight per data row, as for :class:`MSE`.
    """

    weights: torch.Tensor | None = field(default=None, repr=False, compare=False)
    name = "softmax_mse"

    def __post_init__(self):
        _check_weights(self.weights, "SoftmaxMSE")


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Softmax cross-entropy on the logits, by generalized Gauss-Newton steps.

    Step ``k`` linearizes the logits at ``theta_{k-1}`` and solves, with the method passed to
    :func:`~lsr_scale.refine` (``Subspace`` or ``Krylov``), the least-squares problem
    ``min_d sum_i w_i ||L_i^T J_i d + c_i||^2`` whose value is the Gauss-Newton model of the
    cross-entropy (see the module notes: ``L_i L_i^T = diag(p_i) - p_i p_i^T``,
    ``c_i = (p_i - y_i) / sqrt(p_i)``). A backtracking line search on the true cross-entropy
    of the network at ``theta_{k-1} + t d`` (``t = 1, 1/2, 1/4, ...``) gives
    ``theta_k = theta_{k-1} + t d``. The steps stop after ``steps``, when no ``t`` lowers the
    training loss, or, with ``refine(..., validation=...)``, when a step's predictor does not
    lower the validation cross-entropy (the best step is kept).

    The refined predictor of the step kept, ``k``, is the linearized logits
    ``q(theta_{k-1}, x) + J_q(x) t d`` around that step's linearization point, and
    :meth:`~lsr_scale.RefinedModel.to_network` is the network at ``theta_k``.

    Parameters
    ----------
    label_smoothing : float
        In ``[0, 1)``: the training targets are ``(1 - eps) y + eps / C``, as in
        ``torch.nn.CrossEntropyLoss(label_smoothing=eps)``. Validation targets are not
        smoothed.
    steps : int
        The most Gauss-Newton steps (default 10). Each is a refine of its own; on the digits
        CNNs of ``docs/results.md`` (section 6) steps 4 to 10 still lowered the training loss
        and raised test accuracy, on a network trained briefly (where the first steps are
        short) and on one trained long.
    weights : torch.Tensor of shape (N,), optional
        A weight per data row: the training loss is ``sum_i w_i CE_i / sum_i w_i``.
    floor : float
        The curvature uses the probabilities clipped below at ``floor`` (and renormalized),
        which bounds ``|c_i|`` by about ``1 / sqrt(floor)`` on badly misclassified rows and
        damps the step there (a probability of 0 would make the factor singular).
    backtracks : int
        The line search tries ``t = 1, 1/2, ..., 2**-backtracks``.
    """

    label_smoothing: float = 0.0
    steps: int = 10
    weights: torch.Tensor | None = field(default=None, repr=False, compare=False)
    floor: float = 1e-6
    backtracks: int = 10
    name = "cross_entropy"

    def __post_init__(self):
        ls_ = self.label_smoothing
        if isinstance(ls_, bool) or not isinstance(ls_, (int, float)) or not 0 <= ls_ < 1:
            raise ValueError(
                f"CrossEntropy.label_smoothing: expected a number in [0, 1), got {ls_!r}"
            )
        check_positive_int(self.steps, "CrossEntropy.steps")
        check_nonnegative_int(self.backtracks, "CrossEntropy.backtracks")
        fl = self.floor
        if isinstance(fl, bool) or not isinstance(fl, (int, float)) or not 0 < fl < 1:
            raise ValueError(f"CrossEntropy.floor: expected a number in (0, 1), got {fl!r}")
        _check_weights(self.weights, "CrossEntropy")


_NAMES = {"mse": MSE, "softmax_mse": SoftmaxMSE, "cross_entropy": CrossEntropy}


def as_loss(loss) -> Loss:
    """A loss object from ``loss=``: a loss object or one of the names ``"mse"``,
    ``"softmax_mse"``, ``"cross_entropy"`` (the default objects)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _NAMES:
        return _NAMES[loss]()
    if isinstance(loss, type) and issubclass(loss, Loss):
        raise TypeError(
            f"loss: expected a loss object such as ls.losses.{loss.__name__}(), "
            f"got the class {loss.__name__}"
        )
    raise ValueError(
        "loss: expected 'mse', 'softmax_mse', 'cross_entropy' or a loss object "
        f"(ls.losses.MSE(...), SoftmaxMSE(...), CrossEntropy(...)), got {loss!r}"
    )


# ---------------------------------------------------------------- the per-row algebra
def factor_t_apply(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``L^T z`` row by row, for ``L = diag(s) - p s^T`` and ``p = s**2`` (O(C) per row).

    ``s`` and ``z`` have shape ``(N, C)``; ``L L^T = diag(p) - p p^T`` when each row of ``p``
    sums to 1.
    """
    return s * (z - (s * s * z).sum(-1, keepdim=True))


def factor_apply(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``L v`` row by row, for ``L = diag(s) - p s^T`` and ``p = s**2`` (O(C) per row)."""
    return s * v - (s * s) * (s * v).sum(-1, keepdim=True)


def gauss_newton_rows(logits: torch.Tensor, targets: torch.Tensor, floor: float):
    """``(s, c)``: the factor's ``s = sqrt(p~)`` and the residual ``c`` with ``L c = p - y``.

    ``p~`` is ``softmax(logits)`` clipped below at ``floor`` and renormalized (the curvature);
    the gradient ``p - y`` uses the softmax itself. ``targets`` are class probabilities
    (rows summing to 1), so ``p - y`` sums to 0 and ``c = (p - y) / s`` solves ``L c = p - y``
    exactly; ``c`` is orthogonal to ``s``, the null space of ``L``.
    """
    p = torch.softmax(logits, dim=-1)
    pc = p.clamp_min(floor)
    pc = pc / pc.sum(-1, keepdim=True)
    s = pc.sqrt()
    return s, (p - targets) / s


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy ``-sum_j y_j log softmax(z)_j`` against class probabilities."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1)


def smooth(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """``(1 - eps) y + eps / C``: label smoothing of class probabilities ``(N, C)``."""
    if not eps:
        return targets
    return targets * (1.0 - eps) + eps / targets.shape[-1]


def class_targets(targets, n_rows: int, n_classes: int, dtype, device, name: str):
    """Class probabilities ``(N, C)`` from integer labels ``(N,)`` or probabilities ``(N, C)``.

    Returns ``(probabilities, labels)``; ``labels`` are the given labels or the argmax of the
    given probabilities (for the accuracy).
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(targets).__name__}")
    if targets.device != device:
        raise ValueError(f"{name}: expected device {device} (the model's), got {targets.device}")
    integer = not targets.is_floating_point() and not targets.is_complex()
    if integer and targets.dtype != torch.bool:
        if targets.ndim != 1 or targets.shape[0] != n_rows:
            raise ValueError(
                f"{name}: expected class labels of shape ({n_rows},), got shape "
                f"{tuple(targets.shape)}"
            )
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{name}: expected class labels in [0, {n_classes}) (the model's {n_classes} "
                f"outputs), got labels in [{lo}, {hi}]"
            )
        labels = targets.long()
        probs = torch.nn.functional.one_hot(labels, n_classes).to(dtype)
        return probs, labels
    if not targets.is_floating_point():
        raise TypeError(
            f"{name}: expected integer class labels (N,) or floating class probabilities "
            f"(N, C), got {targets.dtype}"
        )
    if tuple(targets.shape) != (n_rows, n_classes):
        raise ValueError(
            f"{name}: expected class labels of shape ({n_rows},) or class probabilities of "
            f"shape ({n_rows}, {n_classes}), got shape {tuple(targets.shape)}"
        )
    if targets.dtype != dtype:
        raise TypeError(
            f"{name}: expected class probabilities of dtype {dtype} (the model's), got "
            f"{targets.dtype}; convert them, or pass integer labels"
        )
    sums = targets.sum(-1)
    tol = math.sqrt(torch.finfo(dtype).eps) * 10
    bad = ~torch.isfinite(targets).all(-1) | (targets < 0).any(-1) | ((sums - 1).abs() > tol)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"{name}: expected class probabilities (finite, >= 0, each row summing to 1), got "
            f"{int(bad.sum())} of {n_rows} rows that are not (rows {rows})"
        )
    return targets, targets.argmax(-1)
