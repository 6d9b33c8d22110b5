"""LinearOperator algebra, conversions, counters and validation."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import lsr_scale as ls
from lsr_scale.operators import DiagonalOperator, IdentityOperator
from lsr_scale.testing import dottest


@pytest.fixture
def mats(generator):
    A = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    B = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    C = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    return A, B, C


def test_algebra_matches_dense(mats):
    A, B, C = mats
    opA, opB, opC = map(ls.aslinearoperator, (A, B, C))
    torch.testing.assert_close((opA + opB).to_dense(), A + B)
    torch.testing.assert_close((opA - opB).to_dense(), A - B)
    torch.testing.assert_close((2.5 * opA).to_dense(), 2.5 * A)
    torch.testing.assert_close((opA * -1.5).to_dense(), -1.5 * A)
    torch.testing.assert_close((-opA).to_dense(), -A)
    torch.testing.assert_close(opA.T.to_dense(), A.T)
    torch.testing.assert_close((opA @ opC).to_dense(), A @ C)
    torch.testing.assert_close((opA.T @ opB).to_dense(), A.T @ B)
    x = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(opA @ x, A @ x)
    y = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(y @ opA, y @ A)


@pytest.mark.parametrize("kind", ["tensor", "numpy", "scipy_sparse", "scipy_op", "diag", "eye"])
def test_dottest_every_operator(kind, generator):
    M = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    if kind == "tensor":
        op = ls.aslinearoperator(M)
    elif kind == "numpy":
        op = ls.aslinearoperator(M.numpy())
    elif kind == "scipy_sparse":
        op = ls.aslinearoperator(sp.csr_matrix(M.numpy()))
    elif kind == "scipy_op":
        from scipy.sparse.linalg import aslinearoperator as sla

        op = ls.aslinearoperator(sla(M.numpy()))
    elif kind == "diag":
        op = DiagonalOperator(M[:, 0])
    else:
        op = IdentityOperator(5, dtype=torch.float64)
    assert dottest(op, generator=generator)
    assert dottest(op.T, generator=generator)


def test_dottest_without_generator_uses_global_rng(generator):
    # No hidden seed: generator=None draws from torch's global RNG (and advances it).
    op = ls.aslinearoperator(torch.randn(7, 5, generator=generator, dtype=torch.float64))
    seen = []
    matvec = op._matvec
    op._matvec = lambda x: seen.append(x.clone()) or matvec(x)
    torch.manual_seed(11)
    assert dottest(op, ntrials=1)
    state = torch.get_rng_state()
    assert dottest(op, ntrials=1)
    assert not torch.equal(torch.get_rng_state(), state)
    assert dottest(op, ntrials=1, generator=torch.Generator().manual_seed(11))
    assert torch.equal(seen[0], seen[2]) and not torch.equal(seen[0], seen[1])


def test_check_helpers_messages():
    from lsr_scale import _checks as c

    x = torch.zeros(3, dtype=torch.float64)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"x: expected shape \(4,\) \(rows\), got \(3,\)"):
        c.check_vector(x, 4, torch.float64, cpu, "x", note=" (rows)")
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32, got torch.float64 — "):
        c.check_vector(x, 3, torch.float32, cpu, "x", like="A")
    with pytest.raises(TypeError, match=r"X: expected a torch.Tensor of shape \(3, k\), got list"):
        c.check_matrix([1.0], 3, torch.float64, cpu, "X")
    with pytest.raises(ValueError, match=r"X: expected shape \(3, k\), got \(3,\)"):
        c.check_matrix(x, 3, torch.float64, cpu, "X")
    assert c.check_tensor(x[:, None], (3, None), torch.float64, "cpu", "X") is not None
    op = ls.aslinearoperator(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"M: expected shape \(2, k\) \(rows\), got \(3, 2\)"):
        c.check_operator(op, (2, None), torch.float64, cpu, "M", note=" (rows)")
    with pytest.raises(TypeError, match="M: expected dtype torch.float32"):
        c.check_operator(op, (3, 2), torch.float32, None, "M")
    with pytest.raises(TypeError, match="d: expected a floating torch.dtype, got torch.int64"):
        c.check_float_dtype(torch.int64, "d")
    assert c.check_tolerance(math.inf, "c", allow_zero=False, allow_inf=True) == math.inf
    with pytest.raises(ValueError, match="t: expected a finite number >= 0, got inf"):
        c.check_tolerance(math.inf, "t")
    with pytest.raises(ValueError, match="c: expected a number > 0 or inf, got nan"):
        c.check_tolerance(math.nan, "c", allow_zero=False, allow_inf=True)
    with pytest.raises(ValueError, match=r"k: expected <= min\(m, n\) = 2, got 3"):
        c.check_at_most(3, 2, "k", "min(m, n)")
    with pytest.raises(ValueError, match="s: expected >= m = 4, got 3"):
        c.check_at_least(3, 4, "s", "m")
    assert c.check_at_least(4, 4, "s", "m") == 4
    with pytest.raises(TypeError, match="f: expected a callable, got NoneType"):
        c.check_callable(None, "f", allow_none=False)
    assert c.check_callable(None, "f") is None
    with pytest.raises(TypeError, match="generator: expected a torch.Generator or None, got int"):
        c.check_generator(0)
    with pytest.raises(ValueError, match=r"inputs: expected at least one row of data"):
        c.check_inputs((torch.zeros(0, 2),), "inputs", torch.float32, cpu)
    assert not hasattr(c, "check_finite")


def test_dottest_catches_wrong_transpose(generator):
    M = torch.randn(5, 5, generator=generator, dtype=torch.float64)

    class Broken(ls.LinearOperator):
        def _matvec(self, x):
            return M @ x

        def _rmatvec(self, y):
            return M @ y  # wrong: should be M.T

    with pytest.raises(AssertionError, match="dottest failed"):
        dottest(Broken((5, 5), torch.float64, "cpu"), generator=generator)
    assert dottest(Broken((5, 5), torch.float64, "cpu"), raise_error=False) is False


def test_counts_and_reset(mats):
    A, _, C = mats
    op = ls.aslinearoperator(A)
    op.matvec(torch.zeros(4, dtype=torch.float64))
    op.matmat(torch.zeros(4, 3, dtype=torch.float64))
    op.rmatvec(torch.zeros(6, dtype=torch.float64))
    assert (op.num_matvecs, op.num_rmatvecs) == (4, 1)
    op.T.matvec(torch.zeros(6, dtype=torch.float64))
    assert op.num_rmatvecs == 2
    op.reset_counts()
    assert (op.num_matvecs, op.num_rmatvecs) == (0, 0)


def test_to_scipy_roundtrip(mats):
    A, _, _ = mats
    sop = ls.aslinearoperator(A).to_scipy()
    v = np.arange(4.0)
    np.testing.assert_allclose(sop.matvec(v), A.numpy() @ v)
    np.testing.assert_allclose(sop.rmatvec(np.ones(6)), A.numpy().T @ np.ones(6))
    assert sop.dtype == np.float64


def test_bad_inputs_raise_clear_errors(mats):
    A, _, C = mats
    op = ls.aslinearoperator(A)
    with pytest.raises(ValueError, match=r"expected shape \(4,\), got \(5,\)"):
        op.matvec(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="expected dtype torch.float64, got torch.float32"):
        op.matvec(torch.zeros(4))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        op.matvec(np.zeros(4))
    with pytest.raises(ValueError, match="A @ B: expected A.shape"):
        op @ op
    with pytest.raises(ValueError, match="A \\+ B: expected equal shapes"):
        op + ls.aslinearoperator(C)
    with pytest.raises(TypeError, match="A \\+ B: expected operators of one dtype"):
        op + ls.aslinearoperator(A.float())
    with pytest.raises(TypeError, match="expected a LinearOperator"):
        ls.aslinearoperator("not an operator")


def test_subspace_operator_matches_dense_and_streams_blocks(generator):
    from lsr_scale.operators import SubspaceOperator
    from lsr_scale.testing import dottest

    A = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    P = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    op = SubspaceOperator(ls.aslinearoperator(A), P)
    torch.testing.assert_close(op.to_dense(), A @ P)
    assert dottest(op, generator=generator)
    C = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    blocks = list(op.matmat_blocks(C))
    torch.testing.assert_close(torch.cat([b for _, b in blocks]), A @ P @ C)
    with pytest.raises(ValueError, match="P: expected a 2-D tensor with 6 rows"):
        SubspaceOperator(ls.aslinearoperator(A), P[:5])
