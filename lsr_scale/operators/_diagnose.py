"""Which layer and which operation a model cannot be differentiated through.

When neither product back end can differentiate a residual, the operator's error names the
torch operation (``aten::...`` from torch's messages), the layer it ran in (the module path,
found by running one forward-mode JVP with temporary global module hooks that track which
modules are open when it fails), the entry point the user called (``data=`` or
``residual_fn=``) and what to do. The hooks are removed afterwards, errors included; the
model itself is never touched.
"""

from __future__ import annotations

import re

import torch
from torch import func as tfunc

__all__ = ["failing_layer", "failing_ops"]

_OP = re.compile(r"aten::[A-Za-z0-9_.]+")


def failing_ops(*errors: BaseException) -> list[str]:
    """The ``aten::`` operations named in the errors' messages, in order, without repeats."""
    out: list[str] = []
    for err in errors:
        for op in _OP.findall(str(err)):
            if op not in out:
                out.append(op)
    return out


def failing_layer(model: torch.nn.Module, fn, params: dict) -> str | None:
    """``"path (Class)"`` of the innermost module open when a forward-mode JVP of ``fn``
    fails, or None when it does not fail or no module of ``model`` was open."""
    names = {id(mod): name for name, mod in model.named_modules()}
    stack: list[torch.nn.Module] = []
    where: list[torch.nn.Module] = []

    def enter(mod, args):
        if id(mod) in names:
            stack.append(mod)

    def leave(mod, args, out):
        if stack and stack[-1] is mod:
            stack.pop()

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        tangents = {k: torch.zeros_like(v) for k, v in params.items()}
        tfunc.jvp(fn, (params,), (tangents,))
    except Exception:  # noqa: BLE001 - the failure is what is looked for
        where = list(stack)
    finally:
        for h in hooks:
            h.remove()
    if not where:
        return None
    mod = where[-1]
    return f"{names[id(mod)] or '(the model itself)'} ({type(mod).__name__})"
