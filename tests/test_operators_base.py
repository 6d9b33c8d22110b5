"""LinearOperator algebra, conversions, counters and validation."""

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
    x = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(opA @ x, A @ x)
    y = torch.randn(6, dtype=torch.float64)
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
    assert dottest(op)
    assert dottest(op.T)


def test_dottest_catches_wrong_transpose(generator):
    M = torch.randn(5, 5, generator=generator, dtype=torch.float64)

    class Broken(ls.LinearOperator):
        def _matvec(self, x):
            return M @ x

        def _rmatvec(self, y):
            return M @ y  # wrong: should be M.T

    with pytest.raises(AssertionError, match="dottest failed"):
        dottest(Broken((5, 5), torch.float64, "cpu"))
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
    assert dottest(op)
    C = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    blocks = list(op.matmat_blocks(C))
    torch.testing.assert_close(torch.cat([b for _, b in blocks]), A @ P @ C)
    with pytest.raises(ValueError, match="P: expected a 2-D tensor with 6 rows"):
        SubspaceOperator(ls.aslinearoperator(A), P[:5])
