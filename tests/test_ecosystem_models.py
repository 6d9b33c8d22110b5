"""Architectures from the ecosystem's own packages, random initialization, default arguments.

Each runs where its package is installed (the ``test`` and ``models`` extras pin them) and is
skipped otherwise; nothing is downloaded: the models are built from configurations.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lsr_scale as ls


class _LastToken(nn.Module):
    """GPT-2 read out at the last position: a few logits as a regression output."""

    def __init__(self, gpt, k=4):
        super().__init__()
        self.gpt, self.k = gpt, k

    def forward(self, ids):
        return self.gpt(input_ids=ids).logits[:, -1, : self.k]


def _gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=50, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _LastToken(transformers.GPT2LMHeadModel(cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 50, (24, 8), generator=g)
    return model, ids


def test_gpt2_token_ids_refine_with_both_default_methods():
    """Token ids, causal attention, LayerNorm, GELU and a tied embedding, trained briefly."""
    model, ids = _gpt2()
    y = torch.randn(ids.shape[0], 4, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):  # a brief fit, so the refinement starts from a trained point
        opt.zero_grad()
        loss = ((model(ids) - y) ** 2).mean()
        loss.backward()
        opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = (model(ids) - y).norm()
    for method in ("subspace", "krylov"):
        refined = ls.refine(model, data=(ids, y), method=method, progress_bar=False)
        assert refined.info["product_check"]["fallback"] is None
        assert refined.info["loss_linearized"] < refined.info["loss_before"]
        assert (refined(ids) - y).norm() < before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_timm_vit_refines_with_both_default_methods():
    """timm's ViT-Tiny (5.4M parameters) at 32x32 images: patch embedding, attention,
    LayerNorm, GELU. Needs timm (and torchvision matching torch): skipped where absent."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8
    ).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, generator=g)
    with torch.no_grad():
        before = (model(x) - y).norm()
    # the subspace default (rank n/4 = 6 of 24 rows) lowers the error, Krylov fits the rows
    for method, factor in (("subspace", 1.0), ("krylov", 0.1)):
        refined = ls.refine(model, data=(x, y), method=method, progress_bar=False)
        assert refined.info["product_check"]["fallback"] is None
        assert (refined(x) - y).norm() < factor * before


@pytest.mark.slow  # 33 s here: one row per chunk, no cache (the FNO twin runs by default)
def test_gpt2_krylov_within_a_budget_below_its_preconditioner(krylov_below_its_preconditioner):
    """``method="krylov"`` with a ``memory_budget=`` that even without the activation cache
    cannot hold the default Nystrom basis: the plan drops the cache, lowers the rank (issue
    17's step) and the refine still lowers the loss, with the adaptation warned."""
    model, ids = _gpt2()
    y = torch.randn(ids.shape[0], 4, generator=torch.Generator().manual_seed(5))
    r = krylov_below_its_preconditioner(model, (ids, y))
    assert r.info["loss_linearized"] < 1e-3 * r.info["loss_before"]
