"""The Jacobian of a residual with respect to network parameters, as a matrix-free operator.

:class:`JacobianOperator` wraps ``J = d vec(f(theta)) / d vec(theta)`` at a fixed point
``theta0``. Products go through ``torch.func`` (forward-mode JVP, cached reverse-mode VJP) or,
for residuals written with ``torch.autograd.grad``, through the double-VJP trick on plain
autograd graphs. Nothing of size ``n x m`` is ever formed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import func as tfunc

from .._checks import check_choice, check_matrix, check_positive_int, describe
from ._base import LinearOperator

__all__ = ["JacobianOperator", "flatten_params", "unflatten_params", "module_jvp"]

_JVP_MODES = ("auto", "forward", "double_vjp")
_PROBE_SEED = 20240917


def _best_time(fn, device, reps: int = 2) -> float:
    """Shortest of ``reps`` timed calls of ``fn`` (after one untimed warm-up call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    fn()
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


class _NoFallbackError(ValueError):
    """A user error raised inside a residual that must not trigger a mode fallback."""


class _LinearizeError(RuntimeError):
    """``linearize=True`` was asked for and ``torch.func.linearize`` failed."""


# ---------------------------------------------------------------------- parameter vectors
def _check_param_dict(params, name: str = "params") -> dict[str, torch.Tensor]:
    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a dict of str -> torch.Tensor, got {describe(params)}")
    if len(params) == 0:
        raise ValueError(f"{name}: expected at least one parameter tensor, got an empty dict")
    dtype = device = None
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: expected str keys, got {type(key).__name__} key {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}[{key!r}]: expected a torch.Tensor, got {describe(value)}")
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name}[{key!r}]: expected a floating dtype, got {value.dtype}")
        if dtype is None:
            dtype, device, first = value.dtype, value.device, key
        elif value.dtype != dtype:
            raise TypeError(
                f"{name}: expected one dtype for all tensors, got {dtype} ({first!r}) and "
                f"{value.dtype} ({key!r})"
            )
        elif value.device != device:
            raise ValueError(
                f"{name}: expected one device for all tensors, got {device} ({first!r}) and "
                f"{value.device} ({key!r})"
            )
    return dict(params)


def flatten_params(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate a dict of tensors into one 1-D tensor.

    Tensors are taken in the dict's insertion order and each is flattened row-major, the
    column order of :class:`JacobianOperator`.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Floating tensors of one dtype on one device.

    Returns
    -------
    torch.Tensor
        A new 1-D tensor of length ``sum(p.numel() for p in params.values())``.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import flatten_params
    >>> flatten_params({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([5.0])})
    tensor([1., 2., 3., 4., 5.])
    """
    params = _check_param_dict(params)
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def unflatten_params(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict:
    """Split a 1-D tensor into a dict shaped like ``like`` (the inverse of flatten_params).

    Parameters
    ----------
    vec : torch.Tensor
        1-D tensor of length equal to the total number of entries of ``like``.
    like : dict of str to torch.Tensor
        Gives the names, order and shapes.

    Returns
    -------
    dict of str to torch.Tensor
        Views into ``vec`` (no copy), one per entry of ``like``.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators import unflatten_params
    >>> like = {"w": torch.zeros(2, 2), "b": torch.zeros(1)}
    >>> out = unflatten_params(torch.arange(5.0), like)
    >>> out["w"], out["b"]
    (tensor([[0., 1.],
            [2., 3.]]), tensor([4.]))
    """
    if not isinstance(like, Mapping):
        raise TypeError(f"like: expected a dict of str -> torch.Tensor, got {describe(like)}")
    total = sum(int(t.numel()) for t in like.values())
    if not isinstance(vec, torch.Tensor):
        raise TypeError(f"vec: expected a torch.Tensor of shape ({total},), got {describe(vec)}")
    if vec.ndim != 1 or vec.shape[0] != total:
        raise ValueError(
            f"vec: expected shape ({total},) (the total size of like), got {tuple(vec.shape)}"
        )
    out, offset = {}, 0
    for key, t in like.items():
        n = int(t.numel())
        out[key] = vec[offset : offset + n].view(t.shape)
        offset += n
    return out


def _unflatten_columns(V: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict:
    """(m, k) matrix -> dict of (k, *shape) tensors (the batch dim first, for vmap)."""
    out, offset, k = {}, 0, V.shape[1]
    for key, t in like.items():
        n = int(t.numel())
        out[key] = V[offset : offset + n].T.reshape(k, *t.shape)
        offset += n
    return out


def _flatten_columns(grads: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
    """dict of (k, *shape) tensors -> (m, k) matrix."""
    return torch.cat([g.reshape(k, -1) for g in grads.values()], dim=1).T


# ---------------------------------------------------------------------- the operator
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
        How products are computed. ``"forward"`` uses ``torch.func`` (forward-mode JVP and
        ``torch.func.vjp``). ``"double_vjp"`` uses plain ``torch.autograd`` and is meant for
        residuals that call ``torch.autograd.grad`` themselves (typical physics-informed
        code), which break under ``torch.func`` transforms. ``"auto"`` probes forward mode at
        construction and falls back to ``"double_vjp"`` if it fails.
    linearize : {"auto", True, False}
        Cache ``torch.func.linearize`` per block for the forward-mode JVP. ``"auto"`` times
        one linearized and one fresh ``torch.func.jvp`` product at construction and keeps
        the faster (the timings are in ``linearize_timing``), and uses the fresh JVP if
        linearizing fails; ``True`` raises on failure. Needs ``cache=True``.
    batch_size : int, optional
        Columns per ``vmap`` group in ``matmat``/``rmatmat`` (``None``: all at once).
    cache : bool
        Cache the per-block VJP (and linearization / autograd graphs) built at construction.
        With ``False`` nothing is kept and every product recomputes the forward pass.
    check : bool
        Validate the residual at construction: finite, deterministic between two identical
        calls, and every parameter tensor affecting it.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        ``theta0`` (detached references).
    param_names : list of str
    residual : torch.Tensor
        ``vec(f(theta0))``, detached, shape ``(n,)``.
    jvp_mode : str
        The resolved mode, ``"forward"`` or ``"double_vjp"``.
    uses_linearize : bool
        Whether the forward-mode JVP runs through a cached ``torch.func.linearize``.
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

    Notes
    -----
    Cost model: one JVP or VJP costs about two to three forward passes (a linearized JVP about
    2.1 and a cached VJP about 2.0 forward passes on an H100; a fresh ``torch.func.jvp`` about
    3.1). ``matmat`` and ``rmatmat`` ``vmap`` the product over ``batch_size`` columns at a
    time, so their memory grows with ``batch_size``.

    Memory: with ``cache=True`` the cached VJP holds the activations of a forward pass over
    every block (the same as one training step's saved tensors), and a linearization holds
    the primal intermediates its JVP needs, about as much again. Row blocks do not reduce that
    total; ``cache=False`` does (only one block's activations live at a time), at the price of
    a forward pass per product. The double-VJP mode caches, per block, the graph of
    ``r = f(theta)`` and of ``g = J^T u`` for a dummy ``u``; then ``J v = d(g . v)/du``.

    Construction evaluates the residual a few times (the stored value, the cached VJP, the
    linearization, a probe product, and with ``check=True`` a determinism re-evaluation and
    one VJP on a seeded random vector).

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
        params = _check_param_dict(params)
        if callable(residual_fn):
            fns = [residual_fn]
        elif isinstance(residual_fn, (list, tuple)) and len(residual_fn) > 0:
            fns = list(residual_fn)
            for i, fn in enumerate(fns):
                if not callable(fn):
                    raise TypeError(f"residual_fn[{i}]: expected a callable, got {describe(fn)}")
        else:
            raise TypeError(
                "residual_fn: expected a callable or a non-empty list of callables, "
                f"got {describe(residual_fn)}"
            )
        check_choice(jvp, _JVP_MODES, "jvp")
        if not (linearize is True or linearize is False or linearize == "auto"):
            raise ValueError(f"linearize: expected one of 'auto', True, False, got {linearize!r}")
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
        self._linearize_opt = linearize
        self._use_vmap = True

        # 1) plain evaluation: shape, dtype, device, emptiness, finiteness
        plain = [self._eval_block(i, theta0) for i in range(len(fns))]
        sizes = [int(r.numel()) for r in plain]
        self._block_shapes = [tuple(r.shape) for r in plain]
        starts = [0]
        for s in sizes:
            starts.append(starts[-1] + s)
        self.row_slices = [slice(starts[i], starts[i + 1]) for i in range(len(fns))]
        self.num_blocks = len(fns)
        n, m = starts[-1], sum(int(t.numel()) for t in theta0.values())
        if n == 0:
            raise ValueError("residual_fn: expected a non-empty residual, got 0 entries")
        super().__init__((n, m), first.dtype, first.device)
        residual = torch.cat([r.reshape(-1) for r in plain])
        if check:
            self._check_finite_rows(plain)

        # 2) differentiation mode
        self.uses_linearize = False
        self.linearize_timing = None
        if jvp == "double_vjp":
            self._setup_double_vjp()
        else:
            try:
                self._setup_forward(probe=(jvp == "auto"))
            except (_NoFallbackError, _LinearizeError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as err_forward:
                if jvp == "forward":
                    raise
                try:
                    self._setup_double_vjp()
                except _NoFallbackError:
                    raise
                except Exception as err_double:
                    raise RuntimeError(
                        "residual_fn: could not differentiate the residual, neither with "
                        f"torch.func forward mode ({type(err_forward).__name__}: "
                        f"{err_forward}) nor with autograd double-VJP "
                        f"({type(err_double).__name__}: {err_double})"
                    ) from err_double
        self.residual = residual

        # 3) checks that need the operator
        if check:
            second = self._setup_residuals
            if second is None:
                second = [self._eval_block(i, theta0) for i in range(len(fns))]
            self._check_deterministic(plain, second)
            self._check_all_params_used()
        self._setup_residuals = None

    # ------------------------------------------------------------------ setup helpers
    def _eval_block(self, i: int, params) -> torch.Tensor:
        r = self._fns[i](params)
        self._check_residual_tensor(r, i)
        return r.detach()

    def _check_residual_tensor(self, r, i: int) -> None:
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

    def _probe_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(_PROBE_SEED)

    def _randn(self, n: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        return x.to(dtype=self.dtype, device=self.device)

    def _setup_forward(self, probe: bool) -> None:
        self.jvp_mode = "forward"
        self._vjp_fns = [None] * self.num_blocks
        self._lin_fns = None
        outs = [None] * self.num_blocks
        if self.cache:
            for i, fn in enumerate(self._fns):
                out, vjp_fn = tfunc.vjp(fn, self.params)
                outs[i] = out.detach()
                self._vjp_fns[i] = vjp_fn
        if self.cache and self._linearize_opt in (True, "auto"):
            lin_fns = []
            try:
                with warnings.catch_warnings():
                    # torch.fx const-folding inside linearize warns about get_attr nodes.
                    warnings.filterwarnings("ignore", message=".*get_attr Node.*")
                    for fn in self._fns:
                        lin_fns.append(tfunc.linearize(fn, self.params)[1])
                if self._linearize_opt == "auto":
                    gen = self._probe_generator()
                    for lf in lin_fns:
                        lf(unflatten_params(self._randn(self.shape[1], gen), self.params))
                    # "auto" keeps the linearization only where it is faster: on GPUs it
                    # usually is (~2.1x vs ~3.1x a forward pass), on CPUs often not.
                    t = unflatten_params(self._randn(self.shape[1], gen), self.params)
                    fn0 = self._fns[0]
                    t_lin = _best_time(lambda: lin_fns[0](t), self.device)
                    t_plain = _best_time(
                        lambda: tfunc.jvp(fn0, (self.params,), (t,))[1], self.device
                    )
                    self.linearize_timing = {"linearized_s": t_lin, "plain_s": t_plain}
                    if t_lin > t_plain:
                        lin_fns = None
            except _NoFallbackError:
                raise
            except Exception as err:
                if self._linearize_opt is True:
                    raise _LinearizeError(
                        f"linearize=True: torch.func.linearize failed on the residual "
                        f"({type(err).__name__}: {err}); use linearize='auto' or False"
                    ) from err
                lin_fns = None
            self._lin_fns = lin_fns
            self.uses_linearize = lin_fns is not None
        if probe:
            gen = self._probe_generator()
            v = self._randn(self.shape[1], gen)
            w = self._randn(self.shape[0], gen)
            if not self.uses_linearize:
                self._jvp_block(0, _unflatten_columns(v[:, None], self.params), 1)
            if not self.cache:
                self._vjp_block(0, w[self.row_slices[0], None], 1)
        self._setup_residuals = outs if self.cache else None

    def _setup_double_vjp(self) -> None:
        self.jvp_mode = "double_vjp"
        self.uses_linearize = False
        self._lin_fns = self._vjp_fns = None  # drop what a failed forward setup cached
        self._graphs = [None] * self.num_blocks
        outs = [None] * self.num_blocks
        if self.cache:
            for i in range(self.num_blocks):
                self._graphs[i] = self._build_graph(i, need_g=True)
                outs[i] = self._graphs[i][1].detach()
        else:
            graph = self._build_graph(0, need_g=True)
            self._dv_jvp(
                graph,
                torch.zeros(self.shape[1], 1, dtype=self.dtype, device=self.device),
                retain=False,
            )
        self._setup_residuals = outs if self.cache else None

    def _build_graph(self, i: int, need_g: bool):
        """Leaf copies of theta0, r = f(leafs) and (optionally) g = J^T u for a dummy u."""
        leafs = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        with torch.enable_grad():
            r = self._fns[i](leafs)
            self._check_residual_tensor(r, i)
            if not r.requires_grad:
                raise ValueError(
                    "residual_fn: expected a residual that depends on params, got one that "
                    "does not require grad"
                )
            leaf_list = list(leafs.values())
            g = u = None
            if need_g:
                u = torch.zeros_like(r, requires_grad=True)
                g = torch.autograd.grad(
                    r, leaf_list, grad_outputs=u, create_graph=True, allow_unused=True
                )
        return leaf_list, r, u, g

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

    def _check_deterministic(self, first, second) -> None:
        for a, b in zip(first, second):
            if torch.equal(a, b):
                continue
            scale = float(a.abs().max()) if a.numel() else 0.0
            if not torch.allclose(a, b, rtol=1e-6, atol=1e-6 * scale):
                diff = float((a - b).abs().max())
                raise ValueError(
                    "residual_fn: expected identical outputs from identical calls, but the "
                    f"model's outputs change between identical calls (max difference "
                    f"{diff:.3e}); is dropout active or batch-norm in train mode? "
                    "call model.eval()"
                )

    def _check_all_params_used(self) -> None:
        w = self._randn(self.shape[0], self._probe_generator())
        g = self._rmatmat_impl(w[:, None])[:, 0]
        names, offset, peaks = [], 0, []
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

    # ------------------------------------------------------------------ block products
    def _jvp_block(self, i: int, T: dict, k: int) -> torch.Tensor:
        """J_i @ V for tangents T (dict of (k, *shape)) -> (n_i, k)."""
        if self.jvp_mode == "double_vjp":
            raise AssertionError  # pragma: no cover - dispatched elsewhere
        if self.uses_linearize:
            f = self._lin_fns[i]
        else:
            fn = self._fns[i]

            def f(t):
                return tfunc.jvp(fn, (self.params,), (t,))[1]

        if k > 1 and self._use_vmap:
            try:
                return tfunc.vmap(f)(T).reshape(k, -1).T
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, NotImplementedError):
                # Some ops have no batching rule: fall back to a loop over columns.
                self._use_vmap = False
        cols = [f({key: t[j] for key, t in T.items()}).reshape(-1) for j in range(k)]
        return torch.stack(cols, dim=1)

    def _vjp_block(self, i: int, W: torch.Tensor, k: int) -> torch.Tensor:
        """J_i^T @ W for W of shape (n_i, k) -> (m, k)."""
        vjp_fn = self._vjp_fns[i] if self.cache else tfunc.vjp(self._fns[i], self.params)[1]
        shape = self._block_shapes[i]
        if k > 1 and self._use_vmap:
            try:
                (g,) = tfunc.vmap(vjp_fn)(W.T.reshape(k, *shape))
                return _flatten_columns(g, k)
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, NotImplementedError):
                self._use_vmap = False
        cols = []
        for j in range(k):
            (g,) = vjp_fn(W[:, j].reshape(shape))
            cols.append(torch.cat([t.reshape(-1) for t in g.values()]))
        return torch.stack(cols, dim=1)

    def _dv_jvp(self, graph, V: torch.Tensor, retain: bool) -> torch.Tensor:
        """Double-VJP: J_i @ V (V of shape (m, k)) -> (n_i, k)."""
        leaf_list, r, u, g = graph
        k = V.shape[1]
        pairs = []
        offset = 0
        for leaf, gk in zip(leaf_list, g):
            n = leaf.numel()
            if gk is not None and gk.requires_grad:
                pairs.append((gk, V[offset : offset + n].T.reshape(k, *leaf.shape)))
            offset += n
        if not pairs:
            return V.new_zeros(r.numel(), k)
        outs = [p[0] for p in pairs]
        if k == 1:
            (jv,) = torch.autograd.grad(
                outs,
                u,
                grad_outputs=[p[1][0] for p in pairs],
                retain_graph=retain,
                allow_unused=True,
            )
            return V.new_zeros(r.numel(), 1) if jv is None else jv.reshape(-1, 1)
        try:
            (jv,) = torch.autograd.grad(
                outs,
                u,
                grad_outputs=[p[1] for p in pairs],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            if jv is None:
                return V.new_zeros(r.numel(), k)
            return jv.reshape(k, -1).T
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError):
            cols = []
            for j in range(k):
                (jv,) = torch.autograd.grad(
                    outs,
                    u,
                    grad_outputs=[p[1][j] for p in pairs],
                    retain_graph=True,
                    allow_unused=True,
                )
                cols.append(V.new_zeros(r.numel()) if jv is None else jv.reshape(-1))
            return torch.stack(cols, dim=1)

    def _dv_vjp(self, graph, W: torch.Tensor, retain: bool) -> torch.Tensor:
        """Autograd VJP: J_i^T @ W (W of shape (n_i, k)) -> (m, k)."""
        leaf_list, r, _, _ = graph
        k = W.shape[1]

        def assemble(grads, batched):
            parts = []
            for leaf, gr in zip(leaf_list, grads):
                if gr is None:
                    parts.append(W.new_zeros(leaf.numel(), k))
                else:
                    parts.append(gr.reshape(k, -1).T if batched else gr.reshape(-1, 1))
            return torch.cat(parts, dim=0)

        if k == 1:
            grads = torch.autograd.grad(
                r,
                leaf_list,
                grad_outputs=W[:, 0].reshape(r.shape),
                retain_graph=retain,
                allow_unused=True,
            )
            return assemble(grads, False)
        try:
            grads = torch.autograd.grad(
                r,
                leaf_list,
                grad_outputs=W.T.reshape(k, *r.shape),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return assemble(grads, True)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError):
            cols = []
            for j in range(k):
                grads = torch.autograd.grad(
                    r,
                    leaf_list,
                    grad_outputs=W[:, j].reshape(r.shape),
                    retain_graph=True,
                    allow_unused=True,
                )
                cols.append(assemble(grads, False))
            return torch.cat(cols, dim=1)

    def _groups(self, k: int) -> list[slice]:
        b = self.batch_size or max(k, 1)
        return [slice(s, min(s + b, k)) for s in range(0, k, b)]

    def _matmat_block(self, i: int, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        n_i = self.row_slices[i].stop - self.row_slices[i].start
        if k == 0:
            return V.new_zeros(n_i, 0)
        cols = []
        if self.jvp_mode == "double_vjp":
            graph = self._graphs[i] if self.cache else self._build_graph(i, need_g=True)
            groups = self._groups(k)
            for j, sl in enumerate(groups):
                retain = self.cache or j < len(groups) - 1
                cols.append(self._dv_jvp(graph, V[:, sl], retain))
        else:
            for sl in self._groups(k):
                Vg = V[:, sl]
                cols.append(self._jvp_block(i, _unflatten_columns(Vg, self.params), Vg.shape[1]))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def _rmatmat_impl(self, W: torch.Tensor) -> torch.Tensor:
        k = W.shape[1]
        total = None
        for i, rs in enumerate(self.row_slices):
            Wi = W[rs]
            cols = []
            if self.jvp_mode == "double_vjp":
                graph = self._graphs[i] if self.cache else self._build_graph(i, need_g=False)
                groups = self._groups(k)
                for j, sl in enumerate(groups):
                    retain = self.cache or j < len(groups) - 1
                    cols.append(self._dv_vjp(graph, Wi[:, sl], retain))
            else:
                for sl in self._groups(k):
                    cols.append(self._vjp_block(i, Wi[:, sl], sl.stop - sl.start))
            part = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
            total = part if total is None else total + part
        return total

    # ------------------------------------------------------------------ LinearOperator API
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
        return self._rmatmat_impl(Y)

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
        **kwargs,
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
        **kwargs
            Passed to :class:`JacobianOperator` (``jvp``, ``linearize``, ``batch_size``,
            ``cache``, ``check``).

        Returns
        -------
        JacobianOperator
            With ``module``, ``module_output_shape`` and ``chunk_size`` set besides the usual
            attributes.

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
        inputs = _check_inputs(inputs)
        N = inputs[0].shape[0]
        all_params = dict(model.named_parameters())
        names = _select_param_names(all_params, params)
        theta0 = {k: all_params[k].detach() for k in names}
        if len(theta0) == 0:
            raise ValueError(
                "params: expected at least one parameter to differentiate, got none "
                "(no parameter has requires_grad and params= was not given)"
            )
        _check_param_dict(theta0, "model parameters")
        first = next(iter(theta0.values()))
        for j, x in enumerate(inputs):
            if x.dtype.is_floating_point and x.dtype != first.dtype:
                raise TypeError(
                    f"inputs[{j}]: expected the parameters' dtype {first.dtype}, got {x.dtype}"
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

        bounds = (
            [(0, N)]
            if chunk_size is None
            else [(s, min(s + chunk_size, N)) for s in range(0, N, chunk_size)]
        )
        chunked = len(bounds) > 1
        fns = []
        for s, e in bounds:
            xs = tuple(x[s:e] for x in inputs) if chunked else inputs
            ts = None if targets is None else (targets[s:e] if chunked else targets)
            fns.append(_module_residual(model, frozen, buffers, xs, ts, targets, N))
        J = cls(fns if chunked else fns[0], theta0, **kwargs)
        J.module = model
        J.chunk_size = chunk_size
        shapes = J._block_shapes
        if chunked:
            J.module_output_shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        else:
            J.module_output_shape = tuple(shapes[0])
        return J


def _check_inputs(inputs) -> tuple:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)) or len(inputs) == 0:
        raise TypeError(
            f"inputs: expected a torch.Tensor or a non-empty tuple of tensors, got "
            f"{describe(inputs)}"
        )
    for j, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"inputs[{j}]: expected a torch.Tensor, got {describe(x)}")
        if x.ndim == 0:
            raise ValueError(f"inputs[{j}]: expected a leading data dimension, got a 0-d tensor")
    N = inputs[0].shape[0]
    for j, x in enumerate(inputs):
        if x.shape[0] != N:
            raise ValueError(
                f"inputs[{j}]: expected leading dimension {N} (that of inputs[0]), "
                f"got shape {tuple(x.shape)}"
            )
    if N == 0:
        raise ValueError("inputs: expected at least one data row, got 0 (empty data)")
    return tuple(inputs)


def _select_param_names(all_params: dict, params, what: str = "params") -> list[str]:
    if params is None:
        return [k for k, p in all_params.items() if p.requires_grad]
    if isinstance(params, str):
        params = [params]
    names = list(params)
    unknown = [k for k in names if k not in all_params]
    if unknown:
        raise ValueError(
            f"{what}: expected names of the model's parameters ({list(all_params)}), "
            f"got unknown {unknown}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: expected distinct names, got {names}")
    return names


def _module_residual(model, frozen, buffers, xs, ts, targets_full, N):
    def residual(p):
        bufs = {k: b.clone() for k, b in buffers.items()}
        out = tfunc.functional_call(model, ({**frozen, **p}, bufs), xs)
        if ts is None:
            return out
        if out.shape != ts.shape:
            full = (N,) + tuple(out.shape[1:]) if out.ndim else tuple(out.shape)
            raise _NoFallbackError(
                f"targets: expected the model output's shape {full}, got "
                f"{tuple(targets_full.shape)}"
            )
        return out - ts

    return residual


def module_jvp(
    model: torch.nn.Module,
    inputs,
    tangents: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output and its directional derivative along ``tangents``.

    Returns ``(q(theta, x), J_q(x) t)`` with one ``torch.func.jvp``: the linear predictor
    ``q(theta0, x) + J_q(x) delta`` of a refined model on new inputs.

    Parameters
    ----------
    model : torch.nn.Module
        Not mutated (buffers are cloned into ``torch.func.functional_call``).
    inputs : torch.Tensor or tuple of torch.Tensor
        Passed positionally.
    tangents : dict of str to torch.Tensor
        Direction, over a subset of the model's parameter names (others held fixed).
    params : dict of str to torch.Tensor, optional
        Values replacing some parameters (default: the model's own, ``theta0``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The output and its JVP, both of the model output's shape.

    Examples
    --------
    >>> import torch
    >>> from lsr_scale.operators._jacobian import module_jvp
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> out, dout = module_jvp(lin, torch.tensor([[3.0, 4.0]]),
    ...                        {"weight": torch.tensor([[1.0, 0.0]])})
    >>> out.detach(), dout
    (tensor([[11.]]), tensor([[3.]]))
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f"inputs: expected a tensor or a tuple of tensors, got {describe(inputs)}")
    all_params = {k: v.detach() for k, v in model.named_parameters()}
    if params is not None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of str -> Tensor, got {describe(params)}")
        _select_param_names(all_params, list(params))
        all_params.update({k: v.detach() for k, v in params.items()})
    tangents = _check_param_dict(tangents, "tangents")
    _select_param_names(all_params, list(tangents), "tangents")
    for k, t in tangents.items():
        ref = all_params[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise ValueError(
                f"tangents[{k!r}]: expected shape {tuple(ref.shape)} and dtype {ref.dtype}, "
                f"got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
    primals = {k: all_params[k] for k in tangents}
    frozen = {k: v for k, v in all_params.items() if k not in tangents}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def f(p):
        bufs = {k: b.clone() for k, b in buffers.items()}
        return tfunc.functional_call(model, ({**frozen, **p}, bufs), tuple(inputs))

    out, jv = tfunc.jvp(f, (primals,), (dict(tangents),))
    return out, jv
