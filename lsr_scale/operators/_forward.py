"""The ``torch.func`` back end: forward-mode JVPs and reverse-mode VJPs of a pure residual.

``J_i @ v`` is ``torch.func.jvp`` of block ``i`` at ``theta0`` (or its cached linearization,
:mod:`~lsr_scale.operators._linearize`), ``J_i^T @ w`` the cached ``torch.func.vjp`` of block
``i``.
Groups of columns are batched with ``torch.vmap``.

Which residuals it cannot take
------------------------------
``torch.func`` transforms pure tensor functions. A residual that runs fine on its own can
still fail under a transform, and :func:`is_untransformable` recognises the errors torch
raises then, so that ``JacobianOperator(..., jvp="auto")`` can switch to the double-VJP back
end on exactly these and on nothing else:

* ``torch.autograd.grad``, ``Tensor.backward``, ``requires_grad_`` or
  ``torch.autograd.functional`` inside the residual (typical physics-informed code); on
  tensors made inside the residual torch names the functorch transform, on tensors that
  already require grad it raises autograd's "does not require grad and does not have a
  grad_fn" or "appears to not have been used in the graph";
* a custom ``torch.autograd.Function`` without ``setup_context`` (no functorch support);
* an operation or custom Function without a forward-mode AD formula ("forward AD");
* in-place mutation of a tensor captured from outside the residual ("During a grad (vjp,
  jvp, grad, etc) transform ...").

Only ``RuntimeError`` and ``NotImplementedError`` with one of these messages qualify, never
out-of-memory; errors of other types (``ValueError``, ``TypeError``, ...) are the user's and
always propagate. The operator also evaluates every block plainly before any transform, so
an error that plain code raises never gets this far.
"""

from __future__ import annotations

import math

import torch
from torch import func as tfunc

from ._backend import Backend, probe_vector
from ._linearize import linearize
from ._params import flatten_columns, unflatten_columns

__all__ = ["ForwardBackend", "is_untransformable"]

# Message fragments (lower case) of the errors torch.func raises for residuals it cannot
# transform; see the module doc for the cause of each.
_UNTRANSFORMABLE_MESSAGES = (
    "functorch transform",  # autograd.grad / backward / requires_grad_ / autograd.Function
    "does not require grad and does not have a grad_fn",  # autograd.grad on outside tensors
    "appears to not have been used in the graph",  # the same, seen from torch.func.vjp
    "forward ad",  # "Trying to use forward AD with <op> that does not support it"
    "forward mode ad",  # a custom autograd.Function without a jvp staticmethod
    "during a grad (",  # in-place mutation of a captured tensor
)


def is_untransformable(err: BaseException) -> bool:
    """Whether ``err`` is torch.func refusing to transform the residual (see the module doc)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return False
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return False
    msg = str(err).lower()
    return any(s in msg for s in _UNTRANSFORMABLE_MESSAGES)


class ForwardBackend(Backend):
    """Forward-mode JVPs and cached VJPs through ``torch.func``.

    Parameters
    ----------
    fns, params, block_shapes, cache
        As for :class:`~lsr_scale.operators._backend.Backend`. With ``cache=True`` each
        block's ``torch.func.vjp`` is built here and kept; with ``False`` every product
        re-runs the forward pass.
    linearize : bool
        Build and keep each block's linearization for the JVPs (needs ``cache``): traced and
        constant-folded like ``torch.func.linearize``, but functionalized first, since
        torch's own returns wrong products on residuals with in-place operations (see
        :mod:`lsr_scale.operators._linearize`).
        If torch cannot linearize the residual, the back end uses a fresh ``torch.func.jvp``
        per product instead and keeps the reason in ``linearize_error``; the operator decides
        whether that is an error (``linearize=True``) or a warning (``"auto"``).
    probe : bool
        Take one JVP (unless linearized, which already ran forward mode) and, without a
        cache, one VJP of block 0 now, on :func:`~lsr_scale.operators._backend.probe_vector`,
        so that a residual ``torch.func`` cannot transform fails here rather than in the
        first product. A failed linearization is always followed by the probe JVP, since
        the cause may be forward mode itself rather than the tracing.

    Attributes
    ----------
    linearize_error : str or None
        Why the linearization failed (or was dropped by the self-check), if it was
        asked for and did.
    """

    mode = "forward"

    def __init__(
        self,
        fns,
        params,
        block_shapes,
        *,
        cache: bool,
        linearize: bool,
        probe: bool,
        batching: str = "vmap",
    ):
        super().__init__(fns, params, block_shapes, cache=cache, batching=batching)
        self.linearize_error: str | None = None
        self.linearize_exception: BaseException | None = None
        self._vjp_fns = [tfunc.vjp(fn, params)[1] for fn in fns] if cache else None
        self._lin_fns = self._linearize(fns) if (cache and linearize) else None
        self.uses_linearize = self._lin_fns is not None
        first = next(iter(params.values()))
        if (probe and not self.uses_linearize) or self.linearize_error is not None:
            m = sum(int(t.numel()) for t in params.values())
            self._jvp(0, probe_vector(m, first.dtype, first.device)[:, None])
        if probe and not cache:
            w = probe_vector(math.prod(block_shapes[0]), first.dtype, first.device)[:, None]
            self._vjp(tfunc.vjp(fns[0], params)[1], 0, w)

    def _linearize(self, fns):
        try:
            return [linearize(fn, self.params) for fn in fns]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:
            # Linearizing traces the residual (torch.fx); data-dependent control flow and
            # untraceable operations fail there while plain forward mode works. The fresh
            # torch.func.jvp is the reference path and computes the same products, so a
            # failure here only costs speed; a real bug fails again in that path.
            self.linearize_error = f"{type(err).__name__}: {err}"
            self.linearize_exception = err
            return None

    def split_block(self, i: int) -> None:
        halves = self.fns[i : i + 2]
        if self._vjp_fns is not None:
            self._vjp_fns[i] = None
            self._vjp_fns[i : i + 1] = [tfunc.vjp(fn, self.params)[1] for fn in halves]
        if self._lin_fns is not None:
            self._lin_fns[i] = None
            lin = self._linearize(halves)
            if lin is None:  # traced the whole block, so not expected; fresh JVPs still work
                self._lin_fns = None
                self.uses_linearize = False
            else:
                self._lin_fns[i : i + 1] = lin

    # ------------------------------------------------------------------ one group
    def drop_linearization(self, reason: str) -> None:
        """Take fresh ``torch.func.jvp`` products from now on (the product self-check found
        the linearization wrong); ``reason`` goes to ``linearize_error``."""
        self._lin_fns = None
        self.uses_linearize = False
        self.linearize_error = reason

    def fresh_jvp(self, i: int, V: torch.Tensor) -> torch.Tensor:
        """``J_i @ V`` through a fresh ``torch.func.jvp``, linearization or not (the
        reference the self-check compares the linearization with)."""
        return self._jvp(i, V, fresh=True)

    def _jvp(self, i: int, V: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """``J_i @ V`` for ``V`` of shape ``(m, k)`` -> ``(n_i, k)``."""
        k = V.shape[1]
        if self._lin_fns is not None and not fresh:
            f = self._lin_fns[i]
        else:
            fn, params = self.fns[i], self.params

            def f(t):
                return tfunc.jvp(fn, (params,), (t,))[1]

        T = unflatten_columns(V, self.params)
        return self.columns(
            k,
            lambda: tfunc.vmap(f)(T).reshape(k, -1).T,
            lambda j: f({key: t[j] for key, t in T.items()}).reshape(-1),
        )

    def _vjp(self, vjp_fn, i: int, W: torch.Tensor) -> torch.Tensor:
        """``J_i^T @ W`` for ``W`` of shape ``(n_i, k)`` -> ``(m, k)``."""
        k, shape = W.shape[1], self.block_shapes[i]

        def batched():
            (g,) = tfunc.vmap(vjp_fn)(W.T.reshape(k, *shape))
            return flatten_columns(g, k)

        def column(j):
            (g,) = vjp_fn(W[:, j].reshape(shape))
            return torch.cat([t.reshape(-1) for t in g.values()])

        return self.columns(k, batched, column)

    # ------------------------------------------------------------------ Backend API
    def matmat(self, i: int, V: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        cols = [self._jvp(i, V[:, sl]) for sl in groups]
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def rmatmat(self, i: int, W: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        vjp_fn = self._vjp_fns[i] if self.cache else tfunc.vjp(self.fns[i], self.params)[1]
        cols = [self._vjp(vjp_fn, i, W[:, sl]) for sl in groups]
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
