"""The :class:`LinearOperator` base class and its compositions.

An operator maps vectors in R^n (its *input space*, ``shape[1]``) to R^m (``shape[0]``).
Subclasses implement ``_matvec`` and ``_rmatvec`` and may override ``_matmat`` and
``_rmatmat`` with batched versions. The public methods validate their argument, count the
product, and dispatch. Operators are torch-native: vectors are tensors on ``device`` with
``dtype``, and nothing is silently converted.
"""

from __future__ import annotations

from numbers import Number

import numpy as np
import torch

from .._checks import check_matrix, check_vector, describe

__all__ = [
    "LinearOperator",
    "aslinearoperator",
    "MatrixOperator",
    "IdentityOperator",
    "DiagonalOperator",
    "SubspaceOperator",
]


class LinearOperator:
    """A matrix-free linear map ``A: R^n -> R^m`` on torch tensors.

    Parameters
    ----------
    shape : tuple of int
        ``(m, n)``: output and input dimensions.
    dtype : torch.dtype
        Floating dtype of the vectors the operator acts on.
    device : torch.device or str
        Device of those vectors.

    Notes
    -----
    Subclasses implement ``_matvec(x)`` and ``_rmatvec(y)``; ``_matmat(X)`` and
    ``_rmatmat(Y)`` default to a loop over columns. The counters ``num_matvecs`` and
    ``num_rmatvecs`` count *column products* (a ``matmat`` with k columns counts k), so
    benchmark figures such as "JVP+VJP pairs" read them directly. ``reset_counts()`` zeroes
    them.

    Operators compose: ``A @ B``, ``A + B``, ``A - B``, ``alpha * A``, ``-A`` and ``A.T``
    return new operators that evaluate lazily.

    *Row space.* The solvers take every norm and inner product of a vector in the output
    space (a residual-like vector: ``b``, ``u``, ``r``) through :meth:`row_norm`,
    :meth:`row_dot`, :meth:`row_reduce` and :meth:`row_orth`. Here they are the plain torch
    operations; an operator whose rows are distributed over processes
    (:class:`lsr_scale.distributed.ShardedOperator`) overrides them with all-reduces, and the
    compositions pass them on from the operator that owns their rows. Such an operator also
    has a :attr:`local_shape` (the rows this process holds) that differs from ``shape``: the
    vectors it takes and returns have the local sizes.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> A = ls.aslinearoperator(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    >>> A.shape
    (3, 2)
    >>> (A.T @ A).to_dense()
    tensor([[35., 44.],
            [44., 56.]])
    """

    def __init__(self, shape, dtype: torch.dtype, device) -> None:
        if len(shape) != 2 or any(int(s) < 0 for s in shape):
            raise ValueError(f"shape: expected a pair of non-negative ints, got {shape!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0
        self.num_rmatvecs = 0

    # ------------------------------------------------------------------ row space
    # Set by compositions to the operator whose output space (rows) they share; None: their
    # own. The hooks below then pass on to it, so a row-sharded operator keeps its reductions
    # under ``A @ M`` and the solvers' wrappers.
    _rows: LinearOperator | None = None

    @property
    def row_sharded(self) -> bool:
        """Whether the rows are distributed over processes (``lsr_scale.distributed``)."""
        return self._rows is not None and self._rows.row_sharded

    @property
    def local_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` held by this process: ``shape`` unless the rows (or, for a
        transpose, the columns) are distributed. The vectors the products take and return
        have these sizes."""
        if self._rows is None:
            return self.shape
        return (self._rows.local_shape[0], self.shape[1])

    def row_norm(self, u: torch.Tensor) -> torch.Tensor:
        """``||u||`` of a vector ``u`` in the output space (0-d tensor)."""
        if self._rows is not None:
            return self._rows.row_norm(u)
        return torch.linalg.vector_norm(u)

    def row_dot(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``u^T w`` for vectors in the output space (0-d tensor)."""
        if self._rows is not None:
            return self._rows.row_dot(u, w)
        return torch.dot(u, w)

    def row_reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """A sum over the output rows, given this process's part (e.g. ``Q^T Y`` or column
        sums of squares): ``partial`` itself unless the rows are distributed."""
        if self._rows is not None:
            return self._rows.row_reduce(partial)
        return partial

    def row_orth(self, Y: torch.Tensor) -> torch.Tensor:
        """An orthonormal basis of the columns of ``Y`` (rows in the output space): the ``Q``
        of a reduced QR."""
        if self._rows is not None:
            return self._rows.row_orth(Y)
        return torch.linalg.qr(Y, mode="reduced").Q

    # ------------------------------------------------------------------ size of the terms
    # The rounding error of a product is relative to the terms summed into it, not to the
    # result, which can be far smaller when the terms cancel (``A @ B - AB``). A dot test
    # (lsr_scale.testing.dottest) measures its error against these sizes.
    def term_matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A nonnegative vector with the size of the terms summed into each entry of ``A x``.

        ``|M| |x|`` for a dense matrix; sums, products and multiples combine their parts'
        sizes, so cancellation between them does not shrink it. An operator that knows
        nothing finer (a Jacobian) returns ``|A |x||``, one product.
        """
        return self.matvec(x.abs()).abs()

    def term_rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """As :meth:`term_matvec`, for ``A^T y``."""
        return self.rmatvec(y.abs()).abs()

    # ------------------------------------------------------------------ to implement
    def _matvec(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement _matvec")

    def _rmatvec(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement _rmatvec")

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        cols = [self._matvec(X[:, j]) for j in range(X.shape[1])]
        if not cols:
            return X.new_zeros((self.shape[0], 0))
        return torch.stack(cols, dim=1)

    def _rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        cols = [self._rmatvec(Y[:, j]) for j in range(Y.shape[1])]
        if not cols:
            return Y.new_zeros((self.shape[1], 0))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------------ public products
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A @ x`` for a vector ``x`` of shape ``(n,)``."""
        check_vector(
            x, self.local_shape[1], self.dtype, self.device, f"{type(self).__name__}.matvec x"
        )
        self.num_matvecs += 1
        return self._matvec(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``A.T @ y`` for a vector ``y`` of shape ``(m,)``."""
        check_vector(
            y, self.local_shape[0], self.dtype, self.device, f"{type(self).__name__}.rmatvec y"
        )
        self.num_rmatvecs += 1
        return self._rmatvec(y)

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """Return ``A @ X`` for a matrix ``X`` of shape ``(n, k)``."""
        check_matrix(
            X, self.local_shape[1], self.dtype, self.device, f"{type(self).__name__}.matmat X"
        )
        self.num_matvecs += X.shape[1]
        return self._matmat(X)

    def rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        """Return ``A.T @ Y`` for a matrix ``Y`` of shape ``(m, k)``."""
        check_matrix(
            Y, self.local_shape[0], self.dtype, self.device, f"{type(self).__name__}.rmatmat Y"
        )
        self.num_rmatvecs += Y.shape[1]
        return self._rmatmat(Y)

    def reset_counts(self) -> None:
        """Zero ``num_matvecs`` and ``num_rmatvecs``."""
        self.num_matvecs = 0
        self.num_rmatvecs = 0

    # ------------------------------------------------------------------ conversions
    def to_dense(self) -> torch.Tensor:
        """Materialize the operator as a dense ``(m, n)`` tensor (n matvecs)."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def to_scipy(self):
        """Return a :class:`scipy.sparse.linalg.LinearOperator` acting on numpy arrays.

        Vectors are converted to this operator's dtype and device on the way in and
        to numpy (on the host) on the way out.
        """
        from scipy.sparse.linalg import LinearOperator as SciPyOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def _to_torch(a):
            return torch.as_tensor(np.asarray(a), device=self.device).to(self.dtype)

        def mv(v):
            return self.matvec(_to_torch(v).reshape(-1)).cpu().numpy()

        def rmv(v):
            return self.rmatvec(_to_torch(v).reshape(-1)).cpu().numpy()

        def mm(V):
            return self.matmat(_to_torch(V)).cpu().numpy()

        def rmm(V):
            return self.rmatmat(_to_torch(V)).cpu().numpy()

        return SciPyOperator(
            self.shape, matvec=mv, rmatvec=rmv, matmat=mm, rmatmat=rmm, dtype=np_dtype
        )

    # ------------------------------------------------------------------ algebra
    @property
    def T(self) -> LinearOperator:
        """The transpose, as a lazy operator."""
        return _TransposedOperator(self)

    @property
    def H(self) -> LinearOperator:
        """Alias of :attr:`T` (all operators here are real)."""
        return self.T

    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return _ProductOperator(self, other)
        if isinstance(other, torch.Tensor):
            if other.ndim == 1:
                return self.matvec(other)
            if other.ndim == 2:
                return self.matmat(other)
            raise ValueError(f"A @ x: expected a 1-D or 2-D tensor, got {other.ndim}-D")
        return NotImplemented

    def __rmatmul__(self, other):
        if isinstance(other, torch.Tensor):
            if other.ndim == 1:
                return self.rmatvec(other)
            if other.ndim == 2:
                return self.rmatmat(other.T).T
        return NotImplemented

    def __add__(self, other):
        if isinstance(other, LinearOperator):
            return _SumOperator(self, other)
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, LinearOperator):
            return _SumOperator(self, _ScaledOperator(other, -1.0))
        return NotImplemented

    def __mul__(self, alpha):
        if isinstance(alpha, Number) and not isinstance(alpha, bool):
            return _ScaledOperator(self, float(alpha))
        if isinstance(alpha, torch.Tensor) and alpha.ndim == 0:
            return _ScaledOperator(self, float(alpha))
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self):
        return _ScaledOperator(self, -1.0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype} device={self.device}>"


def _check_compatible(a: LinearOperator, b: LinearOperator, what: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{what}: expected operators of one dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{what}: expected operators on one device, got {a.device} and {b.device}")


class _TransposedOperator(LinearOperator):
    def __init__(self, A: LinearOperator) -> None:
        super().__init__((A.shape[1], A.shape[0]), A.dtype, A.device)
        self.A = A

    @property
    def local_shape(self):
        rows, cols = self.A.local_shape
        return (cols, rows)

    def _matvec(self, x):
        return self.A.rmatvec(x)

    def _rmatvec(self, y):
        return self.A.matvec(y)

    def _matmat(self, X):
        return self.A.rmatmat(X)

    def _rmatmat(self, Y):
        return self.A.matmat(Y)

    def term_matvec(self, x):
        return self.A.term_rmatvec(x)

    def term_rmatvec(self, y):
        return self.A.term_matvec(y)

    @property
    def T(self):
        return self.A


class _ProductOperator(LinearOperator):
    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        if A.shape[1] != B.shape[0]:
            raise ValueError(
                f"A @ B: expected A.shape[1] == B.shape[0], got shapes {A.shape} and {B.shape}"
            )
        _check_compatible(A, B, "A @ B")
        super().__init__((A.shape[0], B.shape[1]), A.dtype, A.device)
        self.A, self.B = A, B
        self._rows = A

    @property
    def local_shape(self):
        return (self.A.local_shape[0], self.B.local_shape[1])

    def _matvec(self, x):
        return self.A.matvec(self.B.matvec(x))

    def _rmatvec(self, y):
        return self.B.rmatvec(self.A.rmatvec(y))

    def _matmat(self, X):
        return self.A.matmat(self.B.matmat(X))

    def _rmatmat(self, Y):
        return self.B.rmatmat(self.A.rmatmat(Y))

    def term_matvec(self, x):
        return self.A.term_matvec(self.B.term_matvec(x))

    def term_rmatvec(self, y):
        return self.B.term_rmatvec(self.A.term_rmatvec(y))


class _SumOperator(LinearOperator):
    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        if A.shape != B.shape:
            raise ValueError(f"A + B: expected equal shapes, got {A.shape} and {B.shape}")
        _check_compatible(A, B, "A + B")
        super().__init__(A.shape, A.dtype, A.device)
        self.A, self.B = A, B
        self._rows = A

    @property
    def local_shape(self):
        return self.A.local_shape

    def _matvec(self, x):
        return self.A.matvec(x) + self.B.matvec(x)

    def _rmatvec(self, y):
        return self.A.rmatvec(y) + self.B.rmatvec(y)

    def _matmat(self, X):
        return self.A.matmat(X) + self.B.matmat(X)

    def _rmatmat(self, Y):
        return self.A.rmatmat(Y) + self.B.rmatmat(Y)

    def term_matvec(self, x):
        return self.A.term_matvec(x) + self.B.term_matvec(x)

    def term_rmatvec(self, y):
        return self.A.term_rmatvec(y) + self.B.term_rmatvec(y)


class _ScaledOperator(LinearOperator):
    def __init__(self, A: LinearOperator, alpha: float) -> None:
        super().__init__(A.shape, A.dtype, A.device)
        self.A, self.alpha = A, float(alpha)
        self._rows = A

    @property
    def local_shape(self):
        return self.A.local_shape

    def _matvec(self, x):
        return self.alpha * self.A.matvec(x)

    def _rmatvec(self, y):
        return self.alpha * self.A.rmatvec(y)

    def _matmat(self, X):
        return self.alpha * self.A.matmat(X)

    def _rmatmat(self, Y):
        return self.alpha * self.A.rmatmat(Y)

    def term_matvec(self, x):
        return abs(self.alpha) * self.A.term_matvec(x)

    def term_rmatvec(self, y):
        return abs(self.alpha) * self.A.term_rmatvec(y)


class MatrixOperator(LinearOperator):
    """A dense (or torch-sparse) matrix wrapped as a :class:`LinearOperator`."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ValueError(f"matrix: expected a 2-D torch.Tensor, got {describe(matrix)}")
        if not matrix.dtype.is_floating_point:
            raise TypeError(f"matrix: expected a floating dtype, got {matrix.dtype}")
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matvec(self, x):
        return self.matrix @ x

    def _rmatvec(self, y):
        return self.matrix.T @ y

    def _matmat(self, X):
        return self.matrix @ X

    def _rmatmat(self, Y):
        return self.matrix.T @ Y

    def term_matvec(self, x):
        return self.matrix.abs() @ x.abs()

    def term_rmatvec(self, y):
        return self.matrix.abs().T @ y.abs()

    def to_dense(self) -> torch.Tensor:
        return self.matrix.to_dense() if self.matrix.is_sparse else self.matrix.clone()


class IdentityOperator(LinearOperator):
    """The ``n x n`` identity."""

    def __init__(self, n: int, dtype: torch.dtype = torch.float32, device="cpu") -> None:
        super().__init__((n, n), dtype, device)

    def _matvec(self, x):
        return x.clone()

    _rmatvec = _matvec
    _matmat = _matvec
    _rmatmat = _matvec


class DiagonalOperator(LinearOperator):
    """``diag(d)`` for a 1-D tensor ``d``."""

    def __init__(self, d: torch.Tensor) -> None:
        if not isinstance(d, torch.Tensor) or d.ndim != 1:
            raise ValueError(f"d: expected a 1-D torch.Tensor, got {describe(d)}")
        super().__init__((d.shape[0], d.shape[0]), d.dtype, d.device)
        self.d = d

    def _matvec(self, x):
        return self.d * x

    _rmatvec = _matvec

    def _matmat(self, X):
        return self.d[:, None] * X

    _rmatmat = _matmat


class SubspaceOperator(LinearOperator):
    """``A P`` for an operator ``A`` (n x m) and a dense basis ``P`` (m x k), never stored.

    This is the reduced LSR operator ``G0 P``. ``matmat_blocks`` passes on the row blocks of
    a :class:`JacobianOperator` ``A``, so a sketch can consume ``A P C`` block by block.
    """

    def __init__(self, A: LinearOperator, P: torch.Tensor) -> None:
        if not isinstance(P, torch.Tensor) or P.ndim != 2 or P.shape[0] != A.shape[1]:
            raise ValueError(f"P: expected a 2-D tensor with {A.shape[1]} rows, got {describe(P)}")
        if P.dtype != A.dtype or P.device != A.device:
            raise TypeError(
                f"P: expected dtype {A.dtype} on {A.device}, got {P.dtype} on {P.device}"
            )
        super().__init__((A.shape[0], P.shape[1]), A.dtype, A.device)
        self.A, self.P = A, P
        self._rows = A

    def _matvec(self, c):
        return self.A.matvec(self.P @ c)

    def _rmatvec(self, y):
        return self.P.T @ self.A.rmatvec(y)

    def _matmat(self, C):
        return self.A.matmat(self.P @ C)

    def _rmatmat(self, Y):
        return self.P.T @ self.A.rmatmat(Y)

    def matmat_blocks(self, C):
        """Yield ``(row_slice, (A P C)[row_slice])``: A's own row blocks when it has them."""
        if hasattr(self.A, "matmat_blocks"):
            yield from self.A.matmat_blocks(self.P @ C)
        else:
            yield slice(0, self.shape[0]), self.A.matmat(self.P @ C)


class _ScipyOperator(LinearOperator):
    """A scipy LinearOperator (or numpy/scipy matrix) seen from torch, on the CPU."""

    def __init__(self, A, dtype: torch.dtype) -> None:
        super().__init__(A.shape, dtype, "cpu")
        self.A = A

    def _np(self, x):
        return x.detach().cpu().numpy()

    def _back(self, a):
        return torch.as_tensor(np.asarray(a)).to(self.dtype)

    def _matvec(self, x):
        return self._back(self.A.matvec(self._np(x))).reshape(-1)

    def _rmatvec(self, y):
        return self._back(self.A.rmatvec(self._np(y))).reshape(-1)

    def _matmat(self, X):
        return self._back(self.A.matmat(self._np(X)))

    def _rmatmat(self, Y):
        return self._back(self.A.rmatmat(self._np(Y)))


def aslinearoperator(obj) -> LinearOperator:
    """View ``obj`` as a :class:`LinearOperator`.

    Parameters
    ----------
    obj : LinearOperator, torch.Tensor, numpy.ndarray or scipy LinearOperator / sparse matrix
        Tensors keep their dtype and device. Numpy and scipy objects become CPU operators
        of the matching torch dtype (float64 unless they are float32).

    Raises
    ------
    TypeError
        If ``obj`` is none of the above.
    """
    if isinstance(obj, LinearOperator):
        return obj
    if isinstance(obj, torch.Tensor):
        return MatrixOperator(obj)
    if isinstance(obj, np.ndarray):
        if obj.ndim != 2:
            raise ValueError(f"obj: expected a 2-D array, got {obj.ndim}-D")
        t = torch.from_numpy(np.ascontiguousarray(obj))
        if not t.dtype.is_floating_point:
            t = t.to(torch.float64)
        return MatrixOperator(t)
    try:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla
    except ImportError:  # pragma: no cover - scipy is a core dependency
        sp = spla = None
    if spla is not None and (isinstance(obj, spla.LinearOperator) or sp.issparse(obj)):
        op = spla.aslinearoperator(obj)
        dtype = torch.float32 if np.dtype(op.dtype) == np.float32 else torch.float64
        return _ScipyOperator(op, dtype)
    raise TypeError(
        "obj: expected a LinearOperator, torch.Tensor, numpy array or scipy LinearOperator, "
        f"got {describe(obj)}"
    )
