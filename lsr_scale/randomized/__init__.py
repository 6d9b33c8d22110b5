"""Randomized range finder, SVD and ``A^T A`` eigen-approximation on any LinearOperator
(Halko-Martinsson-Tropp 2011; Frangella-Tropp-Udell 2023), and the randomness rule the whole
package follows (:func:`resolve_generator`)."""

from ._lowrank import lowrank_gram, lowrank_gram_streamed
from ._range import RangeFinder, randomized_range_finder, randomized_svd
from ._rng import gaussian, resolve_generator

__all__ = [
    "randomized_range_finder",
    "randomized_svd",
    "RangeFinder",
    "lowrank_gram",
    "lowrank_gram_streamed",
    "gaussian",
    "resolve_generator",
]
