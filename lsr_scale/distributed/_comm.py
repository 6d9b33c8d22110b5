"""The few collectives the sharded operator needs, on top of ``torch.distributed``.

Every helper takes the process group explicitly and returns the same values on every
process: scalars are gathered and combined in rank order on each process (rather than
reduced by the back end), so the numbers that steer the solvers are bitwise identical
everywhere and no process can take another branch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "require_initialized",
    "resolve_group",
    "all_gather_1d",
    "all_reduce_sum",
    "agree",
    "backend_and_device",
]


def require_initialized(what: str) -> None:
    """Raise unless ``torch.distributed`` is available and its default group initialized."""
    if not dist.is_available():
        raise RuntimeError(f"{what}: expected a torch build with torch.distributed, got none")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{what}: expected an initialized process group; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment "
            "it reads)"
        )


def resolve_group(process_group, what: str):
    """``process_group`` itself, or the default (world) group for None."""
    require_initialized(what)
    if process_group is None:
        return dist.group.WORLD
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"{what}: expected a torch.distributed.ProcessGroup or None (the default group), "
            f"got {type(process_group).__name__}"
        )
    return process_group


def all_gather_1d(t: torch.Tensor, group) -> torch.Tensor:
    """``(world, *t.shape)``: every process's ``t`` (one shape everywhere), in rank order."""
    world = dist.get_world_size(group)
    flat = t.reshape(-1).contiguous()
    out = flat.new_empty(world * flat.numel())
    dist.all_gather_into_tensor(out, flat, group=group)
    return out.reshape((world,) + tuple(t.shape))


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    """The sum of ``t`` over the processes, in place on ``t`` (a contiguous fresh tensor)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def agree(fn, group, what: str, device):
    """Run ``fn()`` on every process and make them agree on whether it failed.

    A check that fails on one process only (say, its rows hold a non-finite residual) would
    leave the others waiting in their next collective until the time-out. Here every process
    learns which ones failed: those re-raise their own error, the others raise a
    ``RuntimeError`` naming them.
    """
    try:
        out, err = fn(), None
    except Exception as e:  # noqa: BLE001 - re-raised below, on this process and the others
        out, err = None, e
    flag = torch.tensor(0 if err is None else 1, dtype=torch.int64, device=device)
    failed = [r for r, f in enumerate(all_gather_1d(flag, group).tolist()) if f]
    if err is not None:
        raise err
    if failed:
        raise RuntimeError(
            f"{what}: failed on process(es) {failed} of the group (their own error says why)"
        )
    return out


def backend_and_device():
    """``(backend, device)`` for this process: NCCL on ``cuda:LOCAL_RANK`` when there are at
    least ``LOCAL_WORLD_SIZE`` CUDA devices on this machine, else gloo on the CPU.

    Reads ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (set by ``torchrun``; 0 and 1 without).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        if dist.is_available() and dist.is_nccl_available():
            return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")
