"""Randomized range finder and SVD on any LinearOperator (Halko-Martinsson-Tropp 2011)."""

from ._range import randomized_range_finder, randomized_svd

__all__ = ["randomized_range_finder", "randomized_svd"]
