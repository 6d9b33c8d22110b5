"""The Jacobian of a residual with respect to network parameters, as a matrix-free operator.

:class:`JacobianOperator` wraps ``J = d vec(f(theta)) / d vec(theta)`` at a fixed point
``theta0``. It owns the row blocks, the construction checks and the product counters; the
products themselves come from one of two back ends:

* :class:`~lsr_scale.operators._forward.ForwardBackend`: ``torch.func`` forward-mode JVPs
  (optionally through a cached ``torch.func.linearize``) and cached ``torch.func.vjp``;
* :class:`~lsr_scale.operators._double_vjp.DoubleVJPBackend`: the double-VJP trick on plain
  autograd graphs, for residuals written with ``torch.autograd.grad``.

Nothing of size ``n x m`` is ever formed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch

from .._checks import (
    check_auto_or_bool,
    check_callables,
    check_choice,
    check_matrix,
    check_positive_int,
    check_tensor_dict,
    describe,
)
from ._backend import Backend, probe_vector
from ._base import LinearOperator
from ._double_vjp import DoubleVJPBackend
from ._forward import ForwardBackend, is_untransformable
from ._module import check_module_inputs, module_jvp, module_residual
from ._params import flatten_params, select_param_names, unflatten_params

__all__ = ["JacobianOperator", "flatten_params", "unflatten_params", "module_jvp"]

# Imported from here by lsr_scale.refine (defined in _params).
_select_param_names = select_param_names

_JVP_MODES = ("auto", "forward", "double_vjp")

# Two identical calls may differ by this many units of the dtype's eps times the size of the
# terms (see JacobianOperator, check=True): room for nondeterministic reductions on GPUs.
_DETERMINISM_EPS = 256


class JacobianOperator(LinearOperator):
    r"""Jacobian of a residual with respect to parameters, ``J = d vec(f) / d vec(theta)``.

    The operator has shape ``(n, m)``: ``n`` is the number of residual entries (the residual
    flattened row-major) and ``m`` the total number of parameter entries (tensors in the
    dict's insertion order, each flattened row-major). ``J @ v`` is a Jacobian-vector product
    (JVP) and ``J.T @ w`` a vector-Jacobian product (VJP); neither forms ``J``.

    Parameters
    ----------
    residual_fn : callable or list of callables
        ``residual_fn(params: dict[str, Tensor]) -> Tensor`` of any shape. A list or tuple of
        such callables defines *row blocks* whose flattened residuals are stacked in order;
        this is how the rows are chunked to bound memory.
    params : dict of str to torch.Tensor
        The linearization point ``theta0``: floating tensors of one dtype on one device.
        Detached references are stored and never written into. The operator takes their
        dtype and device; the residual must have the same.
    jvp : {"auto", "forward", "double_vjp"}
        The back end. ``"forward"``: ``torch.func`` (forward-mode JVP, ``torch.func.vjp``).
        ``"double_vjp"``: plain ``torch.autograd``, for residuals that call
        ``torch.autograd.grad`` themselves (typical physics-informed code), which
        ``torch.func`` cannot transform. ``"auto"``: forward mode, unless setting it up (the
        cached VJPs, the linearization, one probe JVP and, without a cache, one probe VJP)
        raises one of the errors ``torch.func`` raises for a residual it cannot transform;
        then ``"double_vjp"``, with the reason in ``jvp_fallback_reason``. Those errors are
        listed in :mod:`lsr_scale.operators._forward`: autograd calls inside the residual,
        custom ``autograd.Function`` without functorch support, operations without a
        forward-mode formula, in-place writes to captured tensors. Any other error,
        including every ``ValueError`` and ``TypeError``, propagates.
    linearize : {"auto", True, False}
        Whether the forward-mode JVP runs through a cached ``torch.func.linearize`` of each
        block rather than a fresh ``torch.func.jvp`` per product. ``"auto"`` linearizes
        whenever ``cache=True``, on every device, and uses the fresh JVP (with a
        ``RuntimeWarning``, the reason in ``linearize_error``) if torch cannot linearize the
        residual; ``True`` raises ``RuntimeError`` then; ``False`` never linearizes. The rule
        does not depend on timing. Ignored by the double-VJP back end. ``True`` needs
        ``cache=True``.
    batch_size : int, optional
        Columns per ``vmap`` group in ``matmat``/``rmatmat`` (``None``: all at once).
    cache : bool
        Cache the per-block VJP (and linearization / autograd graphs) built at construction.
        With ``False`` nothing is kept and every product recomputes the forward pass.
    check : bool
        Validate the residual at construction: finite, the same in two identical calls, and
        every parameter tensor affecting it (see Notes).

    Attributes
    ----------
    params : dict of str to torch.Tensor
        ``theta0`` (detached references).
    param_names : list of str
    residual : torch.Tensor
        ``vec(f(theta0))``, detached, shape ``(n,)``.
    jvp_mode : str
        The resolved back end, ``"forward"`` or ``"double_vjp"``.
    jvp_fallback_reason : str or None
        Why ``jvp="auto"`` resolved to ``"double_vjp"`` (the forward-mode error), else None.
    uses_linearize : bool
        Whether the forward-mode JVP runs through a cached ``torch.func.linearize``.
    linearize_error : str or None
        Why a requested linearization failed (``linearize="auto"``), else None.
    vmap_error : str or None
        None while column groups are batched with ``vmap``; the vmap error once a residual
        that vmap cannot batch switched the operator to one column at a time (see
        :mod:`lsr_scale.operators._backend`; a ``RuntimeWarning`` says so once).
    row_slices : list of slice
        The rows of each block.
    num_blocks : int

    Raises
    ------
    ValueError
        Empty parameters or residual; with ``check=True``, a non-finite residual (naming
        the rows), outputs that change between identical calls, or parameter tensors that
        do not affect the residual.
    TypeError
        Bad argument types, or a residual whose dtype differs from the parameters'.
    RuntimeError
        The residual cannot be differentiated by the chosen back end (by neither, with
        ``jvp="auto"``), or ``linearize=True`` and torch cannot linearize it.

    Notes
    -----
    Construction checks (``check=True``), all on fixed vectors, none random:

    * *finite*: every residual entry is finite; the message names the first bad rows.
    * *deterministic*: a second plain call gives the same residual as the first (like is
      compared with like: two plain calls, never a plain call against a transformed one).
      Bitwise-equal results pass at once. Otherwise ``max |r1 - r2|`` must be at most
      ``256 * eps(dtype) * s``, with ``s`` the larger of ``max |r|`` and ``max |J theta0|``:
      a trained residual is small by cancellation between terms that are not, and
      ``J theta0`` (one JVP, taken only in this case) measures the size of the terms.
      Dropout, batch norm in train mode or random noise differ by far more.
    * *every parameter used*: no parameter tensor's block of ``J^T w`` is exactly zero,
      for ``w`` the fixed vector of :func:`~lsr_scale.operators._backend.probe_vector`.

    Cost model: one JVP or VJP costs about two to three forward passes. A linearized JVP is
    faster than a fresh ``torch.func.jvp`` on the hardware measured: about 2.1 against 3.1
    forward passes on an H100, and 1.2 to 2.7 times faster on a 2-core x86 CPU (torch 2.13,
    one thread; MLPs, a DeepONet, a conv net and a physics-informed residual with nested
    ``torch.func.grad``), which is why ``linearize="auto"`` linearizes on every device.
    ``matmat`` and ``rmatmat`` ``vmap`` the product over ``batch_size`` columns at a time,
    so their memory grows with ``batch_size``.

    Memory: with ``cache=True`` the cached VJP holds the activations of a forward pass over
    every block (the same as one training step's saved tensors), and a linearization holds
    the primal intermediates its JVP needs, about as much again (``linearize=False`` saves
    that). Row blocks do not reduce that total; ``cache=False`` does (only one block's
    activations live at a time), at the price of a forward pass per product. The
    double-VJP back end caches, per block, the graph of ``r = f(theta)`` and of
    ``g = J^T u`` for a dummy ``u``; then ``J v = d(g . v)/du``.

    Construction evaluates the residual a few times: the stored value, the cached VJP, the
    linearization, a probe product (``jvp="auto"`` without a linearization), and with
    ``check=True`` a second plain call and one VJP.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import JacobianOperator
    >>> A = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    >>> params = {"x": torch.tensor([1.0, -1.0], dtype=torch.float64)}
    >>> J = JacobianOperator(lambda p: A @ p["x"] ** 2, params)
    >>> J.shape, J.jvp_mode
    ((3, 2), 'forward')
    >>> J.to_dense()
    tensor([[  2.,  -4.],
            [  6.,  -8.],
            [ 10., -12.]], dtype=torch.float64)
    >>> J.rmatvec(torch.ones(3, dtype=torch.float64))
    tensor([ 18., -24.], dtype=torch.float64)
    """

    def __init__(
        self,
        residual_fn,
        params: Mapping[str, torch.Tensor],
        *,
        jvp: str = "auto",
        linearize="auto",
        batch_size: int | None = None,
        cache: bool = True,
        check: bool = True,
    ) -> None:
        params = check_tensor_dict(params, "params")
        fns = check_callables(residual_fn, "residual_fn")
        check_choice(jvp, _JVP_MODES, "jvp")
        check_auto_or_bool(linearize, "linearize")
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        if linearize is True and not cache:
            raise ValueError(
                "linearize: expected linearize=False or 'auto' with cache=False "
                "(a linearization is a cache), got True"
            )

        theta0 = {k: v.detach() for k, v in params.items()}
        first = next(iter(theta0.values()))
        self._fns = fns
        self.params = theta0
        self.param_names = list(theta0)
        self.batch_size = batch_size
        self.cache = bool(cache)

        # 1) plain evaluation, outside any transform: shapes, dtype, device, finiteness.
        #    A residual that fails here fails with its own error, before any back end.
        plain = [self._eval_block(i) for i in range(len(fns))]
        self._block_shapes = [tuple(r.shape) for r in plain]
        starts = [0]
        for r in plain:
            starts.append(starts[-1] + int(r.numel()))
        self.row_slices = [slice(starts[i], starts[i + 1]) for i in range(len(fns))]
        self.num_blocks = len(fns)
        n, m = starts[-1], sum(int(t.numel()) for t in theta0.values())
        if n == 0:
            raise ValueError("residual_fn: expected a non-empty residual, got 0 entries")
        super().__init__((n, m), first.dtype, first.device)
        if check:
            self._check_finite_rows(plain)

        # 2) the back end
        self.jvp_fallback_reason: str | None = None
        self.linearize_error: str | None = None
        self._backend = self._make_backend(jvp, linearize)
        self.jvp_mode = self._backend.mode
        self.uses_linearize = self._backend.uses_linearize
        self.residual = torch.cat([r.reshape(-1) for r in plain])

        # 3) checks that need products
        if check:
            self._check_deterministic(plain)
            self._check_all_params_used()

    @property
    def vmap_error(self) -> str | None:
        """None while column groups are batched with ``vmap``; else the vmap error."""
        return self._backend.vmap_error

    # ------------------------------------------------------------------ setup
    def _eval_block(self, i: int) -> torch.Tensor:
        r = self._fns[i](self.params)
        self._check_output(r, i)
        return r.detach()

    def _check_output(self, r, i: int) -> None:
        what = "residual_fn" if len(self._fns) == 1 else f"residual_fn[{i}]"
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"{what}: expected to return a torch.Tensor, got {describe(r)}")
        first = next(iter(self.params.values()))
        if r.dtype != first.dtype:
            raise TypeError(
                f"{what}: expected a residual of the parameters' dtype {first.dtype}, got {r.dtype}"
            )
        if r.device != first.device:
            raise ValueError(
                f"{what}: expected a residual on the parameters' device {first.device}, "
                f"got {r.device}"
            )

    def _make_backend(self, jvp: str, linearize) -> Backend:
        """The back end for ``jvp`` and ``linearize``, by the rules in the class docstring."""
        args = (self._fns, self.params, self._block_shapes)
        if jvp == "double_vjp":
            return DoubleVJPBackend(*args, cache=self.cache, check_output=self._check_output)
        try:
            backend = ForwardBackend(
                *args,
                cache=self.cache,
                linearize=linearize is True or (linearize == "auto" and self.cache),
                probe=jvp == "auto",
            )
        except (RuntimeError, NotImplementedError) as err:
            if jvp == "forward":
                raise
            if not is_untransformable(err):
                err.add_note(
                    "JacobianOperator(jvp='auto') falls back to 'double_vjp' only on the errors "
                    "torch.func raises for residuals it cannot transform, and this is not one "
                    "of them; pass jvp='double_vjp' to use autograd anyway"
                )
                raise
            self.jvp_fallback_reason = f"{type(err).__name__}: {err}"
            try:
                return DoubleVJPBackend(*args, cache=self.cache, check_output=self._check_output)
            except (RuntimeError, NotImplementedError) as err_double:
                if isinstance(err_double, torch.cuda.OutOfMemoryError):
                    raise
                raise RuntimeError(
                    "residual_fn: expected a residual that torch.func forward mode or autograd "
                    f"double-VJP can differentiate, got errors from both: "
                    f"{type(err).__name__}: {err}; {type(err_double).__name__}: {err_double}"
                ) from err_double
        if backend.linearize_error is not None:
            if linearize is True:
                raise RuntimeError(
                    "linearize=True: expected torch.func.linearize to trace the residual, got "
                    f"{backend.linearize_error}; use linearize='auto' or False"
                ) from backend.linearize_exception
            self.linearize_error = backend.linearize_error
            warnings.warn(
                "JacobianOperator: torch.func.linearize cannot trace this residual "
                f"({backend.linearize_error.splitlines()[0]}); using a fresh torch.func.jvp "
                "per product (pass linearize=False to skip the attempt)",
                RuntimeWarning,
                stacklevel=3,
            )
        return backend

    # ------------------------------------------------------------------ checks
    def _check_finite_rows(self, blocks) -> None:
        bad_rows, total_rows, offset = [], 0, 0
        all_2d = all(r.ndim >= 2 for r in blocks)
        for r in blocks:
            rows = r.reshape(r.shape[0], -1) if r.ndim >= 2 else r.reshape(-1, 1)
            bad = ~torch.isfinite(rows).all(dim=1)
            idx = bad.nonzero().reshape(-1)
            if idx.numel():
                bad_rows.append(idx + offset)
            offset += rows.shape[0]
            total_rows += rows.shape[0]
        if bad_rows:
            idx = torch.cat(bad_rows)
            unit = "rows" if all_2d else "entries"
            first = idx[:5].tolist()
            more = ", ..." if idx.numel() > 5 else ""
            raise ValueError(
                f"residual_fn: expected a finite residual, got {idx.numel()} of {total_rows} "
                f"residual {unit} non-finite ({unit} [{', '.join(map(str, first))}{more}]); "
                "check the inputs, targets and parameters for NaN/inf"
            )

    def _check_deterministic(self, first: list[torch.Tensor]) -> None:
        """A second plain call against the first (the rule is in the class Notes)."""
        theta = None
        for i, a in enumerate(first):
            b = self._eval_block(i)
            if torch.equal(a, b):
                continue
            if theta is None:
                theta = flatten_params(self.params)[:, None]
            jt = self._backend.matmat(i, theta, [slice(0, 1)])
            scale = max(float(a.abs().max()), float(b.abs().max()), float(jt.abs().max()))
            tol = _DETERMINISM_EPS * torch.finfo(self.dtype).eps * scale
            diff = float((a - b).abs().max())
            if not diff <= tol:
                raise ValueError(
                    "residual_fn: expected identical outputs from identical calls (to within "
                    f"{_DETERMINISM_EPS} eps x {scale:.3g} = {tol:.3e}), but the model's outputs "
                    f"change between identical calls (max difference {diff:.3e}); is dropout "
                    "active or batch-norm in train mode? call model.eval()"
                )

    def _check_all_params_used(self) -> None:
        w = probe_vector(self.shape[0], self.dtype, self.device)
        g = self._rmatmat(w[:, None])[:, 0]
        peaks, offset = [], 0
        for key, t in self.params.items():
            k = int(t.numel())
            if k:
                peaks.append((key, g[offset : offset + k].abs().amax()))
            offset += k
        values = torch.stack([p for _, p in peaks]).tolist() if peaks else []
        names = [key for (key, _), v in zip(peaks, values) if v == 0]
        if names:
            raise ValueError(
                f"params: expected every parameter tensor to affect the residual, got "
                f"{len(names)} whose gradient is exactly zero: {names}; exclude them with "
                "params= (e.g. JacobianOperator.from_module(..., params=[...]))"
            )

    # ------------------------------------------------------------------ products
    def _groups(self, k: int) -> list[slice]:
        b = self.batch_size or max(k, 1)
        return [slice(s, min(s + b, k)) for s in range(0, k, b)]

    def _matmat_block(self, i: int, V: torch.Tensor) -> torch.Tensor:
        if V.shape[1] == 0:
            rows = self.row_slices[i]
            return V.new_zeros(rows.stop - rows.start, 0)
        return self._backend.matmat(i, V, self._groups(V.shape[1]))

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmat(x[:, None])[:, 0]

    def _rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self._rmatmat(y[:, None])[:, 0]

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[1] == 0:
            return X.new_zeros(self.shape[0], 0)
        return torch.cat([self._matmat_block(i, X) for i in range(self.num_blocks)], dim=0)

    def _rmatmat(self, Y: torch.Tensor) -> torch.Tensor:
        if Y.shape[1] == 0:
            return Y.new_zeros(self.shape[1], 0)
        groups = self._groups(Y.shape[1])
        total = None
        for i, rows in enumerate(self.row_slices):
            part = self._backend.rmatmat(i, Y[rows], groups)
            total = part if total is None else total + part
        return total

    def matmat_blocks(self, V: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(row_slice, J[row_slice] @ V)`` block by block.

        Lets a consumer (a sketch, a reduction) use ``J @ V`` without holding it whole. The
        ``V.shape[1]`` column products are added to ``num_matvecs`` once, after the last block.

        Parameters
        ----------
        V : torch.Tensor
            Shape ``(m, k)``, the operator's dtype and device.
        """
        check_matrix(V, self.shape[1], self.dtype, self.device, "JacobianOperator.matmat_blocks V")
        return self._matmat_blocks(V)

    def _matmat_blocks(self, V):
        for i, rs in enumerate(self.row_slices):
            yield rs, self._matmat_block(i, V)
        self.num_matvecs += V.shape[1]

    # ------------------------------------------------------------------ from a module
    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        inputs,
        targets: torch.Tensor | None = None,
        params: Iterable[str] | None = None,
        *,
        chunk_size: int | None = None,
        jvp: str = "auto",
        linearize="auto",
        batch_size: int | None = None,
        cache: bool = True,
        check: bool = True,
    ) -> JacobianOperator:
        """The Jacobian of the supervised residual ``model(*inputs) - targets``.

        Parameters
        ----------
        model : torch.nn.Module
            Never mutated: parameters and buffers are passed to
            ``torch.func.functional_call`` (buffers cloned), and neither ``requires_grad`` nor
            the training flag is touched.
        inputs : torch.Tensor or tuple of torch.Tensor
            Passed positionally; all share the leading (data) dimension ``N > 0``.
        targets : torch.Tensor, optional
            Same shape as the model output. ``None`` makes the residual the model output
            itself, so the operator is the output Jacobian ``J_q``.
        params : iterable of str, optional
            Names of the parameters to differentiate (default: every parameter with
            ``requires_grad``). The others, and all buffers, stay frozen.
        chunk_size : int, optional
            Split the ``N`` data rows into row blocks of ``chunk_size`` rows.
        jvp, linearize, batch_size, cache, check
            As for :class:`JacobianOperator`.

        Returns
        -------
        JacobianOperator
            With ``module``, ``module_output_shape`` and ``chunk_size`` set besides the usual
            attributes.

        Raises
        ------
        ValueError
            Also for targets whose shape differs from the model output's.

        Examples
        --------
        >>> import torch
        >>> from lsr_scale.operators import JacobianOperator
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(),
        ...                           torch.nn.Linear(4, 1)).double()
        >>> X = torch.linspace(0, 1, 10, dtype=torch.float64).reshape(5, 2)
        >>> J = JacobianOperator.from_module(net, X, torch.zeros(5, 1, dtype=torch.float64),
        ...                                  chunk_size=2)
        >>> J.shape, J.num_blocks, J.module_output_shape
        ((5, 17), 3, (5, 1))
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
        inputs = check_module_inputs(inputs)
        N = inputs[0].shape[0]
        all_params = dict(model.named_parameters())
        names = select_param_names(all_params, params)
        theta0 = {k: all_params[k].detach() for k in names}
        if len(theta0) == 0:
            raise ValueError(
                "params: expected at least one parameter to differentiate, got none "
                "(no parameter has requires_grad and params= was not given)"
            )
        check_tensor_dict(theta0, "model parameters")
        dtype = next(iter(theta0.values())).dtype
        for j, x in enumerate(inputs):
            if x.dtype.is_floating_point and x.dtype != dtype:
                raise TypeError(
                    f"inputs[{j}]: expected the parameters' dtype {dtype}, got {x.dtype}"
                )
        if targets is not None:
            if not isinstance(targets, torch.Tensor):
                raise TypeError(f"targets: expected a torch.Tensor, got {describe(targets)}")
            if targets.ndim == 0 or targets.shape[0] != N:
                raise ValueError(
                    f"targets: expected the model output's shape, with leading dimension "
                    f"{N}, got shape {tuple(targets.shape)}"
                )
        if chunk_size is not None:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        frozen = {k: v.detach() for k, v in all_params.items() if k not in theta0}
        buffers = {k: b.detach() for k, b in model.named_buffers()}

        if chunk_size is None:
            bounds = [(0, N)]
        else:
            bounds = [(s, min(s + chunk_size, N)) for s in range(0, N, chunk_size)]
        chunked = len(bounds) > 1
        fns = []
        for s, e in bounds:
            fns.append(
                module_residual(
                    model,
                    tuple(x[s:e] for x in inputs) if chunked else inputs,
                    None if targets is None else (targets[s:e] if chunked else targets),
                    frozen=frozen,
                    buffers=buffers,
                    n_rows=N,
                    targets_shape=None if targets is None else tuple(targets.shape),
                )
            )
        J = cls(
            fns if chunked else fns[0],
            theta0,
            jvp=jvp,
            linearize=linearize,
            batch_size=batch_size,
            cache=cache,
            check=check,
        )
        J.module = model
        J.chunk_size = chunk_size
        shapes = J._block_shapes
        if chunked:
            J.module_output_shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        else:
            J.module_output_shape = tuple(shapes[0])
        return J
