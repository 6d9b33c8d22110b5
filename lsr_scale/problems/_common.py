"""Helpers shared by the workloads."""

from __future__ import annotations

import torch

from .._utils import progress as _progress

__all__ = ["rel_l2", "train_adam", "adam_loop"]


def rel_l2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Relative L2 error ``||pred - target|| / ||target||`` (flattened)."""
    pred = pred.reshape(-1).double()
    target = target.reshape(-1).double()
    if pred.shape != target.shape:
        raise ValueError(
            f"rel_l2: expected pred and target of one size, got {pred.numel()} and {target.numel()}"
        )
    return float((pred - target).norm() / target.norm().clamp_min(1e-300))


def train_adam(
    model: torch.nn.Module,
    loss_fn,
    *,
    epochs: int,
    lr: float = 1e-3,
    final_lr: float | None = None,
    progress: bool | None = None,
    desc: str = "train (Adam)",
    log_every: int = 100,
) -> list[float]:
    """Full-batch Adam on ``loss_fn()`` with an exponential learning-rate decay.

    Mutates ``model`` (this trains the user's baseline; refinement never does this).
    Returns the loss every ``log_every`` epochs.
    """
    gamma = (final_lr / lr) ** (1.0 / max(epochs, 1)) if final_lr else 1.0
    return adam_loop(
        model,
        lambda epoch: loss_fn(),
        epochs=epochs,
        lr=lr,
        gamma=gamma,
        progress=progress,
        desc=desc,
        log_every=log_every,
    )


def adam_loop(
    model: torch.nn.Module,
    loss_at,
    *,
    epochs: int,
    lr: float,
    gamma: float,
    progress: bool | None = None,
    desc: str = "train (Adam)",
    log_every: int = 100,
) -> list[float]:
    """Adam on ``loss_at(epoch)`` with the learning rate multiplied by ``gamma`` each epoch.

    The loop behind :func:`train_adam` and the workloads' ``train`` methods (which draw their
    batches or points inside ``loss_at``). Returns the loss every ``log_every`` epochs.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    history: list[float] = []
    bar = _progress(total=epochs, desc=desc, disable=None if progress is None else not progress)
    for epoch in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_at(epoch)
        loss.backward()
        opt.step()
        sched.step()
        if epoch % log_every == 0 or epoch == epochs - 1:
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.3e}")
        bar.update(1)
    bar.close()
    return history
