"""neuraloperator's FNO: its products were silently wrong under torch.func.linearize.

Runs where neuraloperator is installed (``pip install -e ".[models]"``); skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch

import lsr_scale as ls
from lsr_scale.testing import dottest

neuralop = pytest.importorskip("neuralop")


def _fno(width=8, modes=8, layers=2, n=10, size=64, seed=0):
    from neuralop.models import FNO

    torch.manual_seed(seed)
    model = FNO(
        n_modes=(modes,), hidden_channels=width, in_channels=1, out_channels=1, n_layers=layers
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 1, size, generator=g)
    y = torch.sin(torch.cumsum(x, dim=-1) / 8)
    return model, x, y


def test_fno_default_products_pass_the_dot_test():
    model, x, y = _fno()
    J = ls.JacobianOperator.from_module(model, x, y)
    assert J.uses_linearize and J.product_check["fallback"] is None
    assert J.product_check["linearize_error"] <= J.product_check["tolerance"]
    assert dottest(J, generator=torch.Generator().manual_seed(0), rtol=1e-5)


def test_fno_krylov_defaults_lower_the_linearized_loss():
    model, x, y = _fno()
    refined = ls.refine(model, data=(x, y), method=ls.Krylov())
    info = refined.info
    assert info["product_check"]["fallback"] is None
    assert info["loss_linearized"] < 0.5 * info["loss_before"]
    with torch.no_grad():
        before = (model(x) - y).norm()
    assert (refined(x) - y).norm() < before


@pytest.mark.slow
def test_fno_of_the_issue_size_passes_the_dot_test():
    """The FNO of the report (hidden 32, 16 modes, 4 layers, 20 inputs of 128 points)."""
    model, x, _ = _fno(width=32, modes=16, layers=4, n=20, size=128)
    J = ls.JacobianOperator.from_module(model, x, torch.randn_like(x))
    assert dottest(J, generator=torch.Generator().manual_seed(0), rtol=1e-5)
