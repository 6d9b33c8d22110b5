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
the trace under* ``torch.func.functionalize``, with the parameters and tangents as its
inputs, which rewrites every in-place operation on a tensor derived from them into an
out-of-place one (a slice write becomes ``slice_scatter``). Only then is the graph folded.
Views are kept (``t`` stays a view, not a copy), so the matrix products, and their rounding,
are those of a fresh ``torch.func.jvp``: on an MLP the two agree bitwise.

Functionalization does not rewrite writes into tensors derived from captured tensors alone
(the inputs, buffers and frozen parameters): batch norm's forward-mode rule computes
``1 / sqrt(var + eps)`` as ``empty_like(...).fill_(1).div_(...)``. Folding stores the
tensor written into and would keep the writes in the per-call graph, so
:func:`rewrite_base_writes` turns such writes into out-of-place operations first, when they
write a whole tensor that nothing else views; any other leftover write is refused
(``RuntimeError``), and the operator takes fresh ``torch.func.jvp`` products (circular
padding does this). The operator's product self-check (``JacobianOperator(self_check=True)``)
compares the result with a fresh ``torch.func.jvp`` on two calls, for whatever this does
not cover.
"""

from __future__ import annotations

import operator
import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch.fx.experimental import const_fold
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["linearize", "rewrite_base_writes"]

# torch.fx const-folding warns about get_attr nodes it creates itself
_FOLD_WARNING = ".*get_attr Node.*"


def _written(node) -> list:
    """The argument nodes an in-place operation writes into (empty for pure operations)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or not schema.is_mutable:
        return []
    out = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if isinstance(value, torch.fx.Node):
                out.append(value)
    return out


def _aliased(node):
    """The argument node whose storage a view (or an in-place result) shares, else None."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:  # one of a list of views (unbind, split, ...)
        return node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.returns or schema.returns[0].alias_info is None:
        return None
    sets = schema.returns[0].alias_info.before_set
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.before_set & sets:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            return value if isinstance(value, torch.fx.Node) else None
    return None


def _functional_overload(node):
    """The out-of-place twin of an in-place op (``aten.div_.Tensor`` -> ``aten.div.Tensor``)."""
    packet = getattr(node.target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return None
    twin = getattr(torch.ops.aten, name[:-1], None)
    return getattr(twin, node.target._overloadname, None) if twin is not None else None


def rewrite_base_writes(gm: torch.fx.GraphModule) -> None:
    """Rewrite what functionalization left in place into out-of-place operations.

    It leaves writes into tensors derived from captured tensors alone (the inputs, buffers
    and frozen parameters): batch norm's forward-mode rule computes ``1 / sqrt(var + eps)``
    as ``empty_like(...).fill_(1).div_(...)``. A write ``op_(w, ...)`` into a tensor ``w``
    that is not a view and has no views becomes ``op(w, ...)``, and every later use of ``w``
    reads the result. Anything else (a write through a view, an op with no out-of-place
    twin) raises ``RuntimeError``, and the caller takes fresh ``torch.func.jvp`` products.
    """
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        written = _written(node)
        if not written:
            continue
        twin = _functional_overload(node)
        w = written[0]
        order = {n: i for i, n in enumerate(graph.nodes)}
        viewed = _aliased(w) is not None or any(_aliased(u) is w for u in w.users if u is not node)
        if twin is None or len(written) > 1 or w is not node.args[0] or viewed:
            raise RuntimeError(
                f"linearize: expected in-place operations on whole tensors only after "
                f"functionalization, got {node.target} on a view or without an out-of-place "
                "form"
            )
        with graph.inserting_after(node):
            pure = graph.call_function(twin, node.args, node.kwargs)
        node.replace_all_uses_with(pure)
        for user in list(w.users):
            if user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(w, pure)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        gm.recompile()


def linearize(fn, params: dict[str, torch.Tensor]):
    """The JVP of ``fn`` at ``params``, traced and folded once: ``jvp(tangents) -> Tensor``.

    Computes what ``torch.func.linearize(fn, params)[1]`` is meant to (see the module doc for
    why not that), for a function of one dict of tensors returning one tensor; ``tangents``
    is a dict with the keys and shapes of ``params``.

    Raises
    ------
    RuntimeError
        What tracing raises (data-dependent control flow, untraceable operations), and
        in-place writes it cannot rewrite (:func:`rewrite_base_writes`). The caller falls
        back to a fresh ``torch.func.jvp`` then.
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
        rewrite_base_writes(pure)  # what functionalization could not see, if it is simple
        del traced  # the retrace holds what the graph needs
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
