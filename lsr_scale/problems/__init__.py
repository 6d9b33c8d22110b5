"""Seeded, download-free workloads: data, baseline training and error evaluation."""

from ._common import rel_l2, train_adam
from ._function import FunctionProblem, target_function

__all__ = ["FunctionProblem", "target_function", "rel_l2", "train_adam"]
