"""Small, plain reference models for the workloads and examples.

LSR itself is architecture-agnostic: any ``torch.nn.Module`` works.
"""

from ._mlp import MLP

__all__ = ["MLP"]
