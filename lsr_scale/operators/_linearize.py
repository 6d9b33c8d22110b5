"""A cached linearization that is right on residuals with in-place operations.

Why not ``torch.func.linearize``
--------------------------------
``torch.func.linearize(f, x)`` traces the forward-mode JVP of ``f`` into an FX graph and then
*constant-folds* it: every node that does not depend on the tangent (the primal activations,
the derivatives of the activations) is computed once and stored
(``torch.fx.experimental.const_fold.split_const_subgraphs``). The folding reorders nodes by
their data dependencies and does not see mutation, so a residual with an in-place operation
on an intermediate gets wrong products, with nothing raised (torch 2.13.0, CPU, the version
this project tests on; the reproducers are in ``docs/solvers.md``, "Checking the products"):

* a write into a slice of a new tensor (``z = zeros(...); z[:k] = g(x); h(z)``, as in
  neuraloperator's FNO, which writes the kept Fourier modes into a zeros tensor) folds
  ``h'(z)`` from ``z`` *before* the write: wrong from the first call (``z.cos()`` gives a JVP
  of 0);
* an in-place operation on an intermediate (``Tensor.exp_``, ``sigmoid_``, ``add_``, as in
  ``nn.GRU``'s cell) stays in the per-call graph while its input is a stored constant: each
  call overwrites the constant, so the first call is right and every later one drifts
  (``(2 * x).exp_()`` gives ``2 e^2 t``, then ``2 e^(e^2) t``, then ``inf``).

On the models measured the dot-test error was 3e-4 to 5e-2 of the product, far above
rounding.

What this module does instead
-----------------------------
:func:`linearize` traces the same dual-number evaluation with ``make_fx``, then *retraces
the trace under* ``torch.func.functionalize``, which rewrites every in-place operation into
an out-of-place one (a slice write becomes ``slice_scatter``). Only then is the graph folded:
with nothing mutated, folding cannot change what it computes. Views are kept (``t`` stays a
view, not a copy), so the matrix products, and their rounding, are those of a fresh
``torch.func.jvp``: on an MLP the two agree bitwise.
A traced graph that still holds a mutating operation is refused (``RuntimeError``), and the
operator then takes fresh ``torch.func.jvp`` products instead, as for any residual that
cannot be traced.
"""

from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["linearize"]

# torch.fx const-folding warns about get_attr nodes it creates itself
_FOLD_WARNING = ".*get_attr Node.*"


def _mutating_nodes(gm: torch.fx.GraphModule) -> list:
    """The nodes of ``gm`` whose operation writes into one of its inputs."""
    return [
        node
        for node in gm.graph.nodes
        if node.op == "call_function"
        and getattr(getattr(node.target, "_schema", None), "is_mutable", False)
    ]


def linearize(fn, params: dict[str, torch.Tensor]):
    """The JVP of ``fn`` at ``params``, traced and folded once: ``jvp(tangents) -> Tensor``.

    Computes what ``torch.func.linearize(fn, params)[1]`` is meant to (see the module doc for
    why not that), for a function of one dict of tensors returning one tensor; ``tangents``
    is a dict with the keys and shapes of ``params``.

    Raises
    ------
    RuntimeError
        Also what tracing raises (data-dependent control flow, untraceable operations), and
        when the functionalized graph still writes in place. The caller falls back to a fresh
        ``torch.func.jvp`` then.
    """
    keys = list(params)
    primals = [params[k] for k in keys]
    k = len(keys)

    def tangent_of(*flat):
        # primals as inputs too, so that functionalization sees every tensor derived from
        # them (a captured tensor is a constant it does not rewrite)
        with fwAD.dual_level():
            duals = {key: fwAD.make_dual(p, t) for key, p, t in zip(keys, flat[:k], flat[k:])}
            primal, tangent = fwAD.unpack_dual(fn(duals))
            # an output that does not depend on the parameters has no tangent
            return torch.zeros_like(primal) if tangent is None else tangent

    examples = primals + [p.new_empty(()).expand_as(p) for p in primals]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=_FOLD_WARNING)
        traced = make_fx(tangent_of)(*examples)
        pure = make_fx(torch.func.functionalize(traced, remove="mutations"))(*examples)
        del traced  # the retrace holds what the graph needs
        left = _mutating_nodes(pure)
        if left:
            raise RuntimeError(
                "linearize: expected a graph without in-place operations after "
                f"functionalization, got {sorted({str(n.target) for n in left})}"
            )
        # the primals become stored constants, so folding computes everything that depends
        # on them alone once
        placeholders = [n for n in pure.graph.nodes if n.op == "placeholder"]
        for j, node in enumerate(placeholders[:k]):
            name = f"_lsr_primal_{j}"
            pure.register_buffer(name, primals[j])
            with pure.graph.inserting_before(node):
                const = pure.graph.get_attr(name)
            node.replace_all_uses_with(const)
            pure.graph.erase_node(node)
        pure.recompile()
        folded = const_fold.split_const_subgraphs(pure)
        folded.run_folding()  # now, not lazily in the first product

    def jvp(tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return folded(*[tangents[k] for k in keys])

    return jvp
