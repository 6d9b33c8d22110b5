"""Attention kernels that forward mode and double-VJP can differentiate.

PyTorch runs ``F.scaled_dot_product_attention`` (and through it ``nn.MultiheadAttention``
and the ``nn.Transformer*`` layers) through fused kernels chosen at call time: flash and
memory-efficient attention, and on the CPU a flash kernel, none of which has a forward-mode
(JVP) formula or a double-backward; and ``nn.TransformerEncoderLayer`` in eval mode takes a
"fast path" (``aten::_transformer_encoder_layer_fwd``) with no derivative at all when no
input requires grad, which is what ``torch.func`` transforms look like from inside. The
math kernel is plain matmul and softmax, which every transform differentiates.

:func:`differentiable_attention` selects it, and turns the fast path off, for the duration
of one evaluation of the model, and restores both afterwards, errors included. Every model
evaluation of a Jacobian product and of the refined predictor runs inside it. The model is
not touched: both switches are torch's global settings.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["differentiable_attention"]


def _sdpa_math():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def differentiable_attention():
    """Math SDPA kernel and no MHA fast path inside the block; the previous settings after."""
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with _sdpa_math():
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fast)
