"""``data=`` as a ``DataLoader``: row blocks fetched from the dataset at every product.

Data that does not fit in memory comes as a :class:`torch.utils.data.DataLoader` yielding
``(inputs, targets)`` batches. Each batch becomes one row block of the
:class:`~lsr_scale.JacobianOperator`, built with ``cache=False``: no activations are kept
between products, and every product re-reads its block from the dataset. Only one block's
data and activations live at a time, for a forward pass per block and product.
"""

from __future__ import annotations

import torch

from ..operators import JacobianOperator
from ..operators._module import module_residual
from ..operators._params import select_param_names
from ._model import _as_tuple

__all__ = ["is_loader", "LoaderData"]


def is_loader(data) -> bool:
    """Whether ``data=`` is a ``DataLoader`` (rather than an ``(inputs, targets)`` pair)."""
    return isinstance(data, torch.utils.data.DataLoader)


class LoaderData:
    """The batches of a ``DataLoader``, fixed once, and how to fetch each again.

    The batch order is drawn once from ``loader.batch_sampler`` (a shuffling sampler is thus
    frozen for the whole refinement), and batch ``i`` is rebuilt with ``loader.collate_fn``
    from ``loader.dataset`` each time a product needs it.

    Parameters
    ----------
    loader : torch.utils.data.DataLoader
        Yields ``(inputs, targets)``: ``inputs`` a tensor or a tuple of tensors.
    convert : callable
        Applied to every fetched tensor (the precision ``refine`` works in).
    """

    def __init__(self, loader, convert) -> None:
        if loader.batch_sampler is None:
            raise ValueError(
                "data: expected a DataLoader with a batch size (its batches are the row blocks), "
                "got one with batch_size=None"
            )
        self.loader = loader
        self.convert = convert
        self.batches = [list(idx) for idx in loader.batch_sampler]
        if not self.batches:
            raise ValueError("data: expected a DataLoader with at least one batch, got none")

    def __len__(self) -> int:
        return len(self.batches)

    def fetch(self, i: int):
        """Batch ``i`` as ``(inputs tuple, targets)``, converted."""
        batch = self.loader.collate_fn([self.loader.dataset[j] for j in self.batches[i]])
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(
                f"data: expected DataLoader batches (inputs, targets), got {type(batch).__name__}"
            )
        inputs = tuple(self.convert(x) for x in _as_tuple(batch[0]))
        return inputs, self.convert(batch[1])

    def check(self, dtype, device, check_data) -> tuple:
        """Check every batch as ``data=`` pairs are checked; return the first batch's inputs."""
        first = None
        for i in range(len(self)):
            inputs, targets = self.fetch(i)
            check_data((inputs, targets), f"data batch {i}", dtype, device)
            first = first or inputs
        return first

    def jacobian(self, model, params, products) -> JacobianOperator:
        """The residual Jacobian over all batches, one uncached row block per batch."""
        named = dict(model.named_parameters())
        names = select_param_names(named, params)
        theta = {k: v.detach() for k, v in named.items() if k in names}
        frozen = {k: v.detach() for k, v in named.items() if k not in names}
        buffers = {k: b.detach() for k, b in model.named_buffers()}

        def block(i):
            def residual(p):
                inputs, targets = self.fetch(i)
                fn = module_residual(model, inputs, targets, frozen=frozen, buffers=buffers)
                return fn(p)

            return residual

        return JacobianOperator(
            [block(i) for i in range(len(self))],
            theta,
            jvp=products.jvp,
            batch_size=products.batch_size,
            batching=products.batching,
            cache=False,
            self_check=products.self_check,
        )
