"""The double-VJP back end: products on plain autograd graphs.

For residuals that call ``torch.autograd.grad`` themselves (typical physics-informed code),
which ``torch.func`` cannot transform. Per block it builds, on leaf copies of ``theta0``,

* the graph of ``r = f(theta)``; then ``J^T w = d(r . w)/d theta`` is one backward pass;
* the graph of ``g = J^T u = d(r . u)/d theta`` for a dummy ``u = 0`` (``create_graph``);
  ``g`` is linear in ``u``, so ``J v = d(g . v)/du`` is a second backward pass.

Groups of columns are batched with ``is_grads_batched`` (vmap inside autograd), with the
fallback described in :mod:`lsr_scale.operators._backend`.
"""

from __future__ import annotations

import torch

from ._backend import Backend

__all__ = ["DoubleVJPBackend"]


class DoubleVJPBackend(Backend):
    """Jacobian products by reverse-mode autograd, twice reversed for the JVP.

    Parameters
    ----------
    fns, params, block_shapes, cache
        As for :class:`~lsr_scale.operators._backend.Backend`. With ``cache=True`` every
        block's graphs are built here and kept (retained) for all products; with ``False``
        they are rebuilt at every product and freed after it.
    check_output : callable
        ``check_output(r, i)`` validates block ``i``'s residual ``r`` (type, dtype, device).

    Notes
    -----
    Construction takes one JVP of block 0 (on a zero vector), so that a residual autograd
    cannot differentiate twice (an operation without a double-backward formula) fails
    here rather than in the first product.
    """

    mode = "double_vjp"

    def __init__(
        self, fns, params, block_shapes, *, cache: bool, check_output, batching: str = "vmap"
    ) -> None:
        super().__init__(fns, params, block_shapes, cache=cache, batching=batching)
        self._check_output = check_output
        self._graphs = None
        if cache:
            self._graphs = [self._build_graph(i, need_g=True) for i in range(len(fns))]
        m = sum(int(t.numel()) for t in params.values())
        first = next(iter(params.values()))
        V = torch.zeros(m, 1, dtype=first.dtype, device=first.device)
        graph = self._graphs[0] if cache else self._build_graph(0, need_g=True)
        self._jvp(graph, V, retain=cache)

    def split_block(self, i: int) -> None:
        if self._graphs is not None:
            self._graphs[i] = None
            self._graphs[i : i + 1] = [self._build_graph(j, need_g=True) for j in (i, i + 1)]

    def _build_graph(self, i: int, need_g: bool):
        """Leaf copies of theta0, ``r = f(leaves)`` and (optionally) ``g = J^T u``."""
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        with torch.enable_grad():
            r = self.fns[i](leaves)
            self._check_output(r, i)
            if not r.requires_grad:
                raise ValueError(
                    "residual_fn: expected a residual that depends on params, got one that "
                    "does not require grad"
                )
            leaf_list = list(leaves.values())
            g = u = None
            if need_g:
                u = torch.zeros_like(r, requires_grad=True)
                g = torch.autograd.grad(
                    r, leaf_list, grad_outputs=u, create_graph=True, allow_unused=True
                )
        return leaf_list, r, u, g

    # ------------------------------------------------------------------ one group
    def _jvp(self, graph, V: torch.Tensor, retain: bool) -> torch.Tensor:
        """``J_i @ V`` for ``V`` of shape ``(m, k)`` -> ``(n_i, k)``: ``d(g . V)/du``."""
        leaf_list, r, u, g = graph
        k = V.shape[1]
        outs, tangents, offset = [], [], 0
        for leaf, gk in zip(leaf_list, g):
            n = leaf.numel()
            if gk is not None and gk.requires_grad:
                outs.append(gk)
                tangents.append(V[offset : offset + n].T.reshape(k, *leaf.shape))
            offset += n
        if not outs:
            return V.new_zeros(r.numel(), k)

        def batched():
            (jv,) = torch.autograd.grad(
                outs,
                u,
                grad_outputs=tangents,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return V.new_zeros(r.numel(), k) if jv is None else jv.reshape(k, -1).T

        def column(j):
            (jv,) = torch.autograd.grad(
                outs,
                u,
                grad_outputs=[t[j] for t in tangents],
                retain_graph=retain or j < k - 1,
                allow_unused=True,
            )
            return V.new_zeros(r.numel()) if jv is None else jv.reshape(-1)

        return self.columns(k, batched, column)

    def _vjp(self, graph, W: torch.Tensor, retain: bool) -> torch.Tensor:
        """``J_i^T @ W`` for ``W`` of shape ``(n_i, k)`` -> ``(m, k)``: ``d(r . W)/d theta``."""
        leaf_list, r, _, _ = graph
        k = W.shape[1]

        def assemble(grads, batched: bool) -> torch.Tensor:
            parts = []
            for leaf, gr in zip(leaf_list, grads):
                if gr is None:
                    parts.append(W.new_zeros(leaf.numel(), k if batched else 1))
                else:
                    parts.append(gr.reshape(k, -1).T if batched else gr.reshape(-1, 1))
            return torch.cat(parts, dim=0)

        def batched():
            grads = torch.autograd.grad(
                r,
                leaf_list,
                grad_outputs=W.T.reshape(k, *r.shape),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return assemble(grads, True)

        def column(j):
            grads = torch.autograd.grad(
                r,
                leaf_list,
                grad_outputs=W[:, j].reshape(r.shape),
                retain_graph=retain or j < k - 1,
                allow_unused=True,
            )
            return assemble(grads, False)[:, 0]

        return self.columns(k, batched, column)

    # ------------------------------------------------------------------ Backend API
    def _products(self, i: int, X: torch.Tensor, groups: list[slice], jvp: bool):
        if self.cache:
            graph = self._graphs[i]
        else:
            graph = self._build_graph(i, need_g=jvp)
        step = self._jvp if jvp else self._vjp
        cols = [
            step(graph, X[:, sl], retain=self.cache or j < len(groups) - 1)
            for j, sl in enumerate(groups)
        ]
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def matmat(self, i: int, V: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        return self._products(i, V, groups, jvp=True)

    def rmatmat(self, i: int, W: torch.Tensor, groups: list[slice]) -> torch.Tensor:
        return self._products(i, W, groups, jvp=False)
