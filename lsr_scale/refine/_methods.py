"""The pieces every refinement method shares: how products are taken, and what a method gets.

A method is a frozen dataclass with a ``solve(problem) -> (delta, info)``. :func:`refine`
linearizes the residual once, wraps what it knows in a :class:`Problem` and hands it to the
method; adding a method means adding such a class, and nothing in ``refine`` changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice, check_positive_int
from ..operators import JacobianOperator

__all__ = ["Products", "Method", "Problem"]


@dataclass(frozen=True)
class Products:
    """How Jacobian products are taken.

    Parameters
    ----------
    jvp : {"auto", "forward", "double_vjp"}
        The back end of :class:`~lsr_scale.JacobianOperator`: ``torch.func`` forward mode,
        or the double-VJP trick for residuals written with ``torch.autograd.grad``.
    chunk_size : int, optional
        Data rows per Jacobian block (bounds the memory of one product on large ``n``).
        Applies to ``data=`` refinements; a ``residual_fn`` chooses its own rows.
    batch_size : int, optional
        Columns per batched JVP/VJP (default 64; ``None``: all at once). Bounds the memory of
        the range finder and of ``G0 P``: a batch holds one copy of the network's
        activations per column. On the demo problem 64 was both faster and 2.5x leaner than
        all 610 columns at once (CPU); on a GPU with memory to spare a larger value may be
        faster.
    batching : {"auto", "vmap", "loop"}
        How a batch of columns is taken: one ``torch.vmap`` call, or a loop of single
        products. ``"auto"``: the loop on the CPU and for models with complex parameters,
        vmap otherwise (see :class:`~lsr_scale.JacobianOperator`).
    self_check : bool
        Check the products when the operator is built (default): a cached linearization
        against a fresh ``torch.func.jvp``, and one dot test of the JVP against the VJP. On a
        mismatch the operator falls back to the back end that passes and warns;
        ``info["product_check"]`` records what was measured. It costs three JVPs and one VJP
        (under 0.5% of a default refine on the demo problem); ``False`` skips it for timing
        runs.
    cache : bool, optional
        Keep every row block's cached VJP and linearization between products (``True``),
        or keep nothing and recompute a block's forward pass in every product (``False``:
        the memory of one row block instead of all rows' activations, for a forward pass
        per block and product; with ``chunk_size``, this is what bounds the memory of a
        large ``n``). ``None`` (default): cached, unless the plan finds that the cache of
        all rows does not fit ``memory_budget``; then it recomputes in row chunks
        (``docs/scale.md``). Products are the same up to rounding either way.
    """

    jvp: str = "auto"
    chunk_size: int | None = None
    batch_size: int | None = 64
    batching: str = "auto"
    self_check: bool = True
    cache: bool | None = None

    def __post_init__(self):
        check_choice(self.jvp, ("auto", "forward", "double_vjp"), "Products.jvp")
        check_choice(self.batching, ("auto", "vmap", "loop"), "Products.batching")
        if self.chunk_size is not None:
            check_positive_int(self.chunk_size, "Products.chunk_size")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "Products.batch_size")
        if not isinstance(self.self_check, bool):
            raise TypeError(f"Products.self_check: expected True or False, got {self.self_check!r}")
        if self.cache is not None and not isinstance(self.cache, bool):
            raise TypeError(f"Products.cache: expected True, False or None, got {self.cache!r}")

    def jacobian(self, model, inputs, targets=None, *, params=None, check=True):
        """The Jacobian operator of ``model(*inputs) - targets`` (or of the outputs)."""
        return JacobianOperator.from_module(
            model,
            inputs,
            targets,
            params=params,
            chunk_size=self.chunk_size,
            jvp=self.jvp,
            batch_size=self.batch_size,
            batching=self.batching,
            cache=self.cache is not False,
            check=check,
            self_check=self.self_check and check,
        )

    def residual_jacobian(self, residual_fn, theta):
        """The Jacobian operator of ``residual_fn`` at the parameters ``theta`` (a dict)."""
        return JacobianOperator(
            residual_fn,
            theta,
            jvp=self.jvp,
            batch_size=self.batch_size,
            batching=self.batching,
            cache=self.cache is not False,
            self_check=self.self_check,
        )


@dataclass(frozen=True)
class Problem:
    """What :func:`~lsr_scale.refine` hands a method: the linearized problem and its context.

    Attributes
    ----------
    J : JacobianOperator
        ``G0``, the residual Jacobian at ``theta0`` (``n x m``).
    b : torch.Tensor
        ``-f0``: the method solves ``min ||J delta - b||``.
    model : nn.Module
        The network (already in the working dtype; never modified).
    inputs : tuple of Tensor or None
        The data inputs (``None`` for ``residual_fn`` refinements).
    validation : tuple or None
        ``(inputs, targets)`` held out, already checked and converted.
    products : Products
    generator : torch.Generator or None
    stage : callable
        ``stage(text, total=None, done=None, unit="products")`` starts the next phase of
        the progress display: ``done()`` is polled for the count so far (the display shows
        its increase since the phase started), ``total`` is the count expected by the end
        (an upper bound, or ``None``). The Jacobian's column products are the usual count:
        ``done=lsr_scale._progress.product_counter(problem.J)``. See
        :class:`lsr_scale._progress.PhaseProgress`.
    narrow_dtype : torch.dtype or None
        Set when the model computes parameter-dependent values in a precision narrower than
        ``J.dtype`` (:func:`~lsr_scale.refine._precision.narrow_ops`): the products are
        accurate only to it, and a preconditioner should stop at its noise floor.
    plan : Plan or None
        The memory plan this refinement runs (:class:`~._plan.Plan`), for a method that
        decides on a larger setting while it runs (``Subspace(rank="auto")``'s rescans ask
        :meth:`~._plan.Plan.within_budget` first, and report the larger estimate in
        ``info["memory_estimate"]``). ``None`` when no plan was made (``DataLoader`` data).
    """

    J: JacobianOperator
    b: torch.Tensor
    model: torch.nn.Module
    inputs: tuple | None
    validation: tuple | None
    products: Products
    generator: torch.Generator | None
    stage: object
    model_dtype: torch.dtype | None = None
    narrow_dtype: torch.dtype | None = None
    plan: object = None

    def jacobian_at(self, inputs):
        """The output Jacobian ``J_q`` at other inputs, over the same parameters."""
        names = self.J.param_names
        return self.products.jacobian(self.model, inputs, None, params=names, check=False)


class Method:
    """Base of the refinement methods. Subclasses are frozen dataclasses.

    A subclass implements ``solve(problem) -> (delta, info)`` and may override
    :meth:`validation_use`, :meth:`product_dtype` and :meth:`check_problem`.
    """

    name = "method"

    def validation_use(self) -> str:
        """``"required"``, ``"optional"`` or ``"unused"``: what this configuration does with
        ``refine(..., validation=...)``. ``refine`` refuses validation data a method would not
        use, and requires it where it is needed."""
        return "unused"

    def product_dtype(
        self, model_dtype: torch.dtype, *, has_data: bool, device=None
    ) -> torch.dtype | None:
        """The dtype to take Jacobian products in, when the user did not pass ``dtype=``.

        ``None`` (the default) means the model's own. A method returning another dtype gets
        a converted private copy of the model for ``data=`` refinements; the returned
        :class:`RefinedModel` stays in the model's dtype.
        """
        return None

    def check_problem(self, *, has_data: bool) -> None:
        """Refuse settings that cannot apply to this kind of problem, before any work."""

    def plan_notes(self, z, fits) -> list[str]:
        """Lines for the plan's notes about what this method may decide while it runs, for
        the sizes ``z`` (:class:`~._memory.Sizes`); ``fits(method) -> bool`` says whether a
        setting fits the budget. None by default."""
        return []

    def solve(self, problem: Problem):  # pragma: no cover - abstract
        raise NotImplementedError
