"""Small, plain reference models for the workloads and examples.

LSR itself is architecture-agnostic: any ``torch.nn.Module`` works.
"""

from ._deeponet import DeepONet
from ._mlp import MLP
from ._modified_mlp import ModifiedMLP
from ._multionet import MultiONet

__all__ = ["MLP", "DeepONet", "ModifiedMLP", "MultiONet"]
