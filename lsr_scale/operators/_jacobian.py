"""The Jacobian of a residual with respect to network parameters, as a matrix-free operator.

:class:`JacobianOperator` wraps ``J = d vec(f(theta)) / d vec(theta)`` at a fixed point
``theta0``. It owns the row blocks, the construction checks and the product counters; the
products themselves come from one of two back ends:

* :class:`~lsr_scale.operators._forward.ForwardBackend`: ``torch.func`` forward-mode JVPs
  (optionally through a cached linearization, :mod:`~lsr_scale.operators._linearize`)
  and cached ``torch.func.vjp``;
* :class:`~lsr_scale.operators._double_vjp.DoubleVJPBackend`: the double-VJP trick on plain
  autograd graphs, for residuals written with ``torch.autograd.grad``.

How columns are batched and what happens when memory runs out is in
:mod:`lsr_scale.operators._products`; how complex parameters become real columns, in
:mod:`lsr_scale.operators._params`. The construction checks are in
:mod:`lsr_scale.operators._jacobian_checks`. Nothing of size ``n x m`` is ever formed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import torch

from .._checks import (
    check_auto_or_bool,
    check_callables,
    check_choice,
    check_matrix,
    check_param_dict,
    check_positive_int,
    describe,
    real_dtype,
)
from ._attention import differentiable_attention
from ._backend import Backend
from ._base import LinearOperator
from ._diagnose import failing_layer, failing_ops
from ._double_vjp import DoubleVJPBackend
from ._forward import ForwardBackend, is_untransformable
from ._jacobian_checks import (
    check_all_params_used,
    check_deterministic,
    check_finite_blocks,
    check_products,
)
from ._module import check_module_inputs, module_jvp, module_residual
from ._params import (
    as_complex,
    complex_keys,
    flatten_params,
    real_numel,
    real_view,
    select_param_names,
    unflatten_params,
)
from ._products import BATCHINGS, BlockProducts, resolve_batching

__all__ = ["JacobianOperator", "flatten_params", "unflatten_params", "module_jvp"]

# Imported from here by lsr_scale.refine (defined in _params).
_select_param_names = select_param_names

_JVP_MODES = ("auto", "forward", "double_vjp")


class JacobianOperator(BlockProducts, LinearOperator):
    r"""Jacobian of a residual with respect to parameters, ``J = d vec(f) / d vec(theta)``.

    The operator has shape ``(n, m)``: ``n`` is the number of residual entries (the residual
    flattened row-major) and ``m`` the total number of parameter entries (tensors in the
    dict's insertion order, each flattened row-major; a complex entry counts twice, see
    Notes). ``J @ v`` is a Jacobian-vector product (JVP) and ``J.T @ w`` a vector-Jacobian
    product (VJP); neither forms ``J``.

    Parameters
    ----------
    residual_fn : callable or list of callables
        ``residual_fn(params: dict[str, Tensor]) -> Tensor`` of any shape. A list or tuple of
        such callables defines *row blocks* whose flattened residuals are stacked in order;
        this is how the rows are chunked to bound memory.
    params : dict of str to torch.Tensor
        The linearization point ``theta0``: floating tensors of one dtype on one device, and
        complex tensors of the matching precision (``complex64`` with ``float32``,
        ``complex128`` with ``float64``). Detached references are stored and never written
        into. The operator takes their real dtype and their device; the residual must have
        the same (a real residual).
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
        Whether the forward-mode JVP runs through a cached linearization (traced like
        ``torch.func.linearize``, functionalized before folding) of each
        block rather than a fresh ``torch.func.jvp`` per product. ``"auto"`` linearizes
        whenever ``cache=True``, on every device, and uses the fresh JVP (the reason in
        ``linearize_error``; the products are the same) if torch cannot linearize the
        residual, as with nested forward mode in physics-informed residuals; ``True``
        raises ``RuntimeError`` then; ``False`` never linearizes. The rule
        does not depend on timing. Ignored by the double-VJP back end. ``True`` needs
        ``cache=True``.
    batch_size : int, optional
        Columns per group in ``matmat``/``rmatmat`` (``None``: all at once): one ``vmap``
        call per group with ``batching="vmap"``. Halved when a group runs out of memory.
    batching : {"auto", "vmap", "loop"}
        How a group of columns is taken: ``"vmap"`` batches it in one ``torch.vmap`` call
        (memory grows with ``batch_size``), ``"loop"`` takes one column at a time.
        ``"auto"`` is a rule, not a timing: ``"loop"`` on the CPU and whenever a parameter
        is complex, ``"vmap"`` otherwise (real parameters on a GPU); see Notes.
    cache : bool
        Cache the per-block VJP (and linearization / autograd graphs) built at construction.
        With ``False`` nothing is kept and every product recomputes the forward pass.
    check : bool
        Validate the residual at construction: finite, the same in two identical calls, and
        every parameter tensor affecting it (see Notes).
    self_check : bool
        Check the products at construction (see Notes): a cached linearization against a
        fresh ``torch.func.jvp``, and one dot test of the JVP against the VJP, along one
        random direction of a private fixed-seed generator. On a mismatch the operator falls
        back to the back end that passes and warns once; ``product_check`` records it. It
        costs three JVPs and one VJP; ``False`` skips it (timing runs).

    Attributes
    ----------
    params : dict of str to torch.Tensor
        ``theta0`` (detached references).
    param_names : list of str
    residual : torch.Tensor
        ``vec(f(theta0))``, detached, shape ``(n,)``.
    jvp_mode : str
        The resolved back end, ``"forward"`` or ``"double_vjp"``.
    batching : str
        The resolved batching, ``"vmap"`` or ``"loop"``.
    complex_params : tuple of str
        The names of the complex parameters (refined as real pairs).
    jvp_fallback_reason : str or None
        Why ``jvp="auto"`` resolved to ``"double_vjp"`` (the forward-mode error), else None.
    uses_linearize : bool
        Whether the forward-mode JVP runs through a cached linearization.
    linearize_error : str or None
        Why a requested linearization failed (``linearize="auto"``), else None.
    vmap_error : str or None
        None while column groups are batched with ``vmap``; the vmap error once a residual
        that vmap cannot batch switched the operator to one column at a time (see
        :mod:`lsr_scale.operators._backend`; a ``RuntimeWarning`` says so once).
    product_check : dict or None
        What the product self-check measured: ``linearize_error`` and ``dot_test``
        (relative to the size of the terms), ``tolerance``, ``backend`` and ``fallback``
        (None when nothing changed). None with ``self_check=False``.
    row_slices : list of slice
        The rows of each block (more blocks after an out-of-memory split; see Notes).
    num_blocks : int

    Raises
    ------
    ValueError
        Empty parameters or residual; with ``check=True``, a non-finite residual (naming
        the rows), outputs that change between identical calls, or parameter tensors that
        do not affect the residual.
    TypeError
        Bad argument types, or a residual whose dtype differs from the parameters' (real)
        dtype.
    RuntimeError
        The residual cannot be differentiated by the chosen back end (by neither, with
        ``jvp="auto"``), or ``linearize=True`` and torch cannot linearize it.

    Notes
    -----
    Complex parameters: a complex tensor ``p`` is refined as two real ones, its real and
    imaginary parts. Its columns are those of ``torch.view_as_real(p)`` (shape
    ``(*p.shape, 2)``; the pairs ``(Re, Im)`` in row-major order), and the residual receives
    the complex tensor rebuilt from them, so every product is real-linear in real columns.
    :func:`~lsr_scale.operators.flatten_params` and
    :func:`~lsr_scale.operators.unflatten_params` use the same order.

    Batching (``batching="auto"``): on a 2-core x86 CPU with one thread, ``vmap`` over 64
    columns was 2 to 4 times faster per column than a loop only for tiny, overhead-bound
    products (200-row MLPs and DeepONets, a small Fourier-layer model), and 1.3 to 2.7 times
    slower for larger ones (2,000-row MLPs and DeepONets, an FNO-sized model; 3.8 times on
    neuraloperator's FNO), so the CPU loops (``bench/results/batching_cpu.md``). On a GPU,
    ``vmap`` turns ``k`` small kernel launches into one and real parameters batch; complex
    FFT graphs loop on every device. The rule reads only the device and the dtypes; pass
    ``batching="vmap"`` for small models on the CPU.

    Out of memory: a product that raises ``torch.OutOfMemoryError`` is retried with half the
    columns per ``vmap`` group, then (one column not fitting) with half the rows per row
    block for operators built by :meth:`from_module`; a ``RuntimeWarning`` says what
    changed, and the smaller size stays for later products. See
    :mod:`lsr_scale.operators._products`.

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

    Product self-check (``self_check=True``): the tolerance is ``256 eps`` of the dtype, and
    at least ``1.5e-8`` (3.1e-5 in float32, 1.5e-8 in float64), relative to the size of the
    terms (``||u|| ||J v|| + ||J^T u|| ||v||`` for the dot test,
    ``||J v||`` for the comparison of JVPs). A linearization that fails is dropped for fresh
    ``torch.func.jvp`` products; a dot test that fails with ``torch.func`` products moves
    the operator to the double-VJP back end; if that fails too, ``RuntimeError``. The
    linearization here is functionalized before it is folded, because
    ``torch.func.linearize`` returns wrong products for residuals with in-place operations
    (torch 2.13; :mod:`lsr_scale.operators._linearize`), so the check is a safety net.

    Cost model: one JVP or VJP costs about two to three forward passes. A linearized JVP is
    faster than a fresh ``torch.func.jvp`` on the hardware measured: about 2.1 against 3.1
    forward passes on an H100, and 1.2 to 2.7 times faster on a 2-core x86 CPU (torch 2.13,
    one thread; MLPs, a DeepONet, a conv net and a physics-informed residual with nested
    ``torch.func.grad``), which is why ``linearize="auto"`` linearizes on every device.
    With ``batching="vmap"``, ``matmat`` and ``rmatmat`` ``vmap`` the product over
    ``batch_size`` columns at a time, so their memory grows with ``batch_size``.

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
        batching: str = "auto",
        cache: bool = True,
        check: bool = True,
        self_check: bool = True,
        _label: str | None = None,
        _module: torch.nn.Module | None = None,
        _entry: str | None = None,
    ) -> None:
        params = check_param_dict(params, "params")
        fns = check_callables(residual_fn, "residual_fn")
        check_choice(jvp, _JVP_MODES, "jvp")
        check_auto_or_bool(linearize, "linearize")
        check_choice(batching, BATCHINGS, "batching")
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        if linearize is True and not cache:
            raise ValueError(
                "linearize: expected linearize=False or 'auto' with cache=False "
                "(a linearization is a cache), got True"
            )

        theta0 = {k: v.detach() for k, v in params.items()}
        first = next(iter(theta0.values()))
        # for error messages: the module behind the residual and the entry point used
        self._module, self._entry = _module, _entry
        self.params = theta0
        self.param_names = list(theta0)
        self.complex_params = complex_keys(theta0)
        # the parameter space the back ends differentiate: complex tensors as real pairs
        self._real_params = real_view(theta0)
        self._fns = [self._wrap(fn) for fn in fns]
        self.batch_size = batch_size
        self.batching = resolve_batching(batching, first.device, bool(self.complex_params))
        self.cache = bool(cache)
        self._row_bounds = self._row_maker = None  # set by from_module: rows can be split

        # 1) plain evaluation, outside any transform: shapes, dtype, device, finiteness.
        #    A residual that fails here fails with its own error, before any back end.
        plain = [self._eval_block(i) for i in range(len(fns))]
        self._block_shapes = [tuple(r.shape) for r in plain]
        self._set_row_slices()
        n, m = self.row_slices[-1].stop, sum(real_numel(t) for t in theta0.values())
        if n == 0:
            raise ValueError("residual_fn: expected a non-empty residual, got 0 entries")
        super().__init__((n, m), real_dtype(first.dtype), first.device)
        if check:
            check_finite_blocks(plain)

        # 2) the back end
        self.jvp_fallback_reason: str | None = None
        self.linearize_error: str | None = None
        self._backend = self._make_backend(jvp, linearize)
        self.residual = torch.cat([r.reshape(-1) for r in plain])

        # 3) checks that need products
        if check:
            check_deterministic(self, plain)
            check_all_params_used(self)
        self.product_check: dict | None = None
        if self_check:
            if _label is None:
                _label = f"residual_fn {getattr(fns[0], '__qualname__', type(fns[0]).__name__)}"
            self.product_check = check_products(self, _label, self._double_vjp_backend)

    @property
    def jvp_mode(self) -> str:
        """The resolved back end, ``"forward"`` or ``"double_vjp"``."""
        return self._backend.mode

    @property
    def uses_linearize(self) -> bool:
        """Whether the forward-mode JVP runs through a cached linearization."""
        return self._backend.uses_linearize

    @property
    def vmap_error(self) -> str | None:
        """None while column groups are batched with ``vmap``; else the vmap error."""
        return self._backend.vmap_error

    @property
    def num_blocks(self) -> int:
        """The number of row blocks."""
        return len(self._fns)

    # ------------------------------------------------------------------ setup
    def _wrap(self, fn):
        """``fn`` as a function of the real parameter space (complex tensors as pairs)."""
        keys = self.complex_params

        def residual(p):
            # attention kernels that every transform can take (a user's residual_fn may run
            # a transformer too); the global settings are restored after each call
            with differentiable_attention():
                return fn(as_complex(p, keys) if keys else p)

        return residual

    def _set_row_slices(self) -> None:
        starts = [0]
        for shape in self._block_shapes:
            starts.append(starts[-1] + math.prod(shape))
        self.row_slices = [slice(starts[i], starts[i + 1]) for i in range(len(self._fns))]

    def _eval_block(self, i: int) -> torch.Tensor:
        r = self._fns[i](self._real_params)
        self._check_output(r, i)
        return r.detach()

    def _check_output(self, r, i: int) -> None:
        what = "residual_fn" if len(self._fns) == 1 else f"residual_fn[{i}]"
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"{what}: expected to return a torch.Tensor, got {describe(r)}")
        first = next(iter(self.params.values()))
        dtype = real_dtype(first.dtype)
        if r.dtype != dtype:
            raise TypeError(
                f"{what}: expected a residual of the parameters' (real) dtype {dtype}, got "
                f"{r.dtype}"
            )
        if r.device != first.device:
            raise ValueError(
                f"{what}: expected a residual on the parameters' device {first.device}, "
                f"got {r.device}"
            )

    def _undifferentiable(self, err, err_double) -> str:
        """The message for a residual neither back end can differentiate (see _diagnose)."""
        ops = failing_ops(err, err_double)
        layer = None
        if self._module is not None:
            layer = failing_layer(self._module, self._fns[0], self._real_params)
        entry = self._entry or "residual_fn"
        where = (f" in layer {layer}" if layer else "") + (f" at {', '.join(ops)}" if ops else "")
        return (
            f"{entry}: expected a model that torch.func forward mode or autograd double-VJP can "
            f"differentiate, got errors from both{where}: {type(err).__name__}: {err}; "
            f"{type(err_double).__name__}: {err_double}. Fix: run that layer through an "
            "implementation torch can differentiate twice (for a fused kernel, its reference "
            "or math version; attention is switched to the math kernel already), or refine "
            "only the parameters after it (params=[...]) with its outputs as the inputs"
        )

    def _double_vjp_backend(self) -> Backend:
        """A double-VJP back end for this operator's blocks (at construction, or in place of
        a forward back end the self-check refused)."""
        self._backend = None  # free the cached state of the back end being replaced first
        return DoubleVJPBackend(
            self._fns,
            self._real_params,
            self._block_shapes,
            check_output=self._check_output,
            cache=self.cache,
            batching=self.batching,
        )

    def _make_backend(self, jvp: str, linearize) -> Backend:
        """The back end for ``jvp`` and ``linearize``, by the rules in the class docstring."""
        args = (self._fns, self._real_params, self._block_shapes)
        kw = dict(cache=self.cache, batching=self.batching)
        if jvp == "double_vjp":
            return self._double_vjp_backend()
        try:
            backend = ForwardBackend(
                *args,
                linearize=linearize is True or (linearize == "auto" and self.cache),
                probe=jvp == "auto",
                **kw,
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
                return self._double_vjp_backend()
            except (RuntimeError, NotImplementedError) as err_double:
                if isinstance(err_double, torch.cuda.OutOfMemoryError):
                    raise
                raise RuntimeError(self._undifferentiable(err, err_double)) from err_double
        if backend.linearize_error is not None:
            if linearize is True:
                raise RuntimeError(
                    "linearize=True: expected torch.func.linearize to trace the residual, got "
                    f"{backend.linearize_error}; use linearize='auto' or False"
                ) from backend.linearize_exception
            # "auto" is documented to fall back: the products are the same, only their cost
            # differs, and a warning on every physics-informed refine would be noise
            self.linearize_error = backend.linearize_error
        return backend

    # ------------------------------------------------------------------ row splits (OOM)
    def _can_split(self, i: int) -> bool:
        if self._row_bounds is None:
            return False
        s, e = self._row_bounds[i]
        return e - s > 1 and self._block_shapes[i][:1] == (e - s,)

    def _split_rows(self, i: int, what: str) -> str:
        """Halve the row chunk: split every block longer than half of block ``i``."""
        s, e = self._row_bounds[i]
        old, chunk = e - s, (e - s + 1) // 2
        j = 0
        while j < len(self._row_bounds):
            s, e = self._row_bounds[j]
            if e - s > chunk and self._block_shapes[j][:1] == (e - s,):
                rest = self._block_shapes[j][1:]
                self._row_bounds[j : j + 1] = [(s, s + chunk), (s + chunk, e)]
                self._fns[j : j + 1] = [
                    self._wrap(self._row_maker(a, b)) for a, b in self._row_bounds[j : j + 2]
                ]
                self._block_shapes[j : j + 1] = [(chunk,) + rest, (e - s - chunk,) + rest]
                self._backend.split_block(j)
            j += 1
        self._set_row_slices()
        self.chunk_size = chunk
        return (
            f"out of memory in one {what} column of a row block of {old} data rows; "
            f"halving the row chunk to {chunk} rows ({self.num_blocks} row blocks now) and "
            "retrying"
        )

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
        batching: str = "auto",
        cache: bool = True,
        check: bool = True,
        self_check: bool = True,
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
            Split the ``N`` data rows into row blocks of ``chunk_size`` rows (halved when one
            column of a block runs out of memory).
        jvp, linearize, batch_size, batching, cache, check, self_check
            As for :class:`JacobianOperator`. Complex parameters are refined as real pairs.

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
        check_param_dict(theta0, "model parameters")
        dtype = real_dtype(next(iter(theta0.values())).dtype)
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

        def make(s, e, whole=False):
            return module_residual(
                model,
                inputs if whole else tuple(x[s:e] for x in inputs),
                None if targets is None else (targets if whole else targets[s:e]),
                frozen=frozen,
                buffers=buffers,
                n_rows=N,
                targets_shape=None if targets is None else tuple(targets.shape),
            )

        fns = [make(s, e, whole=not chunked) for s, e in bounds]
        J = cls(
            fns if chunked else fns[0],
            theta0,
            jvp=jvp,
            linearize=linearize,
            batch_size=batch_size,
            batching=batching,
            cache=cache,
            check=check,
            self_check=self_check,
            _label=f"model {type(model).__name__}",
            _module=model,
            _entry="data= (model(*inputs) - targets)",
        )
        J._row_bounds, J._row_maker = list(bounds), make
        J.module = model
        J.chunk_size = chunk_size
        shapes = J._block_shapes
        if chunked:
            J.module_output_shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        else:
            J.module_output_shape = tuple(shapes[0])
        return J
