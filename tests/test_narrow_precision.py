"""Models that round inside although their parameters are float64, and rank-deficient sketches.

A float64 model that allocates a float32/complex64 buffer (as neuraloperator's SpectralConv
does) has products accurate only to float32; ``refine`` finds it and the Krylov route then
stops its preconditioner at float32's noise floor (issue 18).
"""

from __future__ import annotations

import pytest
import torch

import lsr_scale as ls
from lsr_scale.precond import Sketch
from lsr_scale.refine._precision import narrow_ops, narrowest

F64 = torch.float64


class _Rounding(torch.nn.Module):
    """tanh(x W1) W2 with the hidden layer written into a buffer of ``buffer_dtype``."""

    def __init__(self, buffer_dtype, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(3, 16, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(torch.randn(16, 1, generator=g, dtype=F64) / 4)
        self.buffer_dtype = buffer_dtype

    def forward(self, x):
        h = torch.zeros(x.shape[0], 16, dtype=self.buffer_dtype)
        h = h + torch.tanh(x @ self.w1).to(self.buffer_dtype)
        return (h.to(F64) @ self.w2).squeeze(-1)


def test_narrow_ops_finds_a_float32_buffer_and_nothing_else():
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    found = narrow_ops(_Rounding(torch.float32), (x,), F64)
    assert found and set(found.values()) == {torch.float32}
    assert narrowest(found) == torch.float32
    assert narrow_ops(_Rounding(F64), (x,), F64) == {}
    complex_found = {"fft": torch.complex64}
    assert narrowest(complex_found) == torch.float32


def test_refine_reports_the_narrow_precision_and_floors_the_preconditioner():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 3, dtype=F64, generator=g)
    y = torch.sin(x.sum(1))
    with pytest.warns(RuntimeWarning, match="float32"):
        r = ls.refine(_Rounding(torch.float32), data=(x, y), method=ls.Krylov(), generator=g)
    assert "float32" in r.info["precision"] and r.info["narrow_ops"]
    assert r.info["loss_linearized"] < r.info["loss_before"]
    r64 = ls.refine(_Rounding(F64), data=(x, y), method=ls.Krylov(), generator=g)
    assert r64.info["narrow_ops"] == {} and r64.info["precision"] == "torch.float64"


def test_sketch_spec_preconditions_a_rank_deficient_operator_on_its_range():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(400, 12, dtype=F64, generator=g)
    A[:, 5] = 0.0  # a column that cannot move the output (an FNO's Im of the zero mode)
    with pytest.raises(ValueError, match="full column rank"):
        Sketch(truncate=False).build(A, generator=g)
    M = Sketch().build(A, generator=g)
    assert M.truncated and M.rank == 11
    b = torch.randn(400, dtype=F64, generator=g)
    res = ls.lsmr(A, b, M=M, atol=1e-12, btol=1e-12)
    ref = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]
    assert torch.allclose(res.x, ref, atol=1e-9)
    # a floor cuts the small directions as well
    A[:, 7] *= 1e-9
    assert Sketch(floor=1e-6).build(A, generator=g).rank == 10
    with pytest.raises(ValueError, match="Sketch.floor"):
        Sketch(floor=2.0)
