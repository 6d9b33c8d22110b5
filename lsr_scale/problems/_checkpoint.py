"""Save and load small trained baselines (state dict + JSON metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_DIR", "save_checkpoint", "load_checkpoint", "checkpoint_path"]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def checkpoint_path(name: str) -> Path:
    """``lsr_scale/problems/checkpoints/<name>.pt`` (shipped with the package)."""
    return CHECKPOINT_DIR / f"{name}.pt"


def save_checkpoint(model: torch.nn.Module, path, meta: dict | None = None) -> None:
    """Write ``model``'s state dict (float32 on the CPU) and ``meta`` as ``path`` and
    ``path.with_suffix('.json')``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps(meta or {}, indent=2, sort_keys=True) + "\n")


def load_checkpoint(model: torch.nn.Module, path) -> dict:
    """Load the weights at ``path`` into ``model`` (cast to its dtype/device); return meta."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint: expected a file at {path}; train it with bench/train_checkpoints.py"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    ref = next(iter(model.parameters()))
    model.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in state.items()})
    meta_path = path.with_suffix(".json")
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}
