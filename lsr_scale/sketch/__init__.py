"""Random sketches (subspace embeddings) as linear operators R^n -> R^s.

Each sketch is a :class:`~lsr_scale.LinearOperator` of shape ``(sketch_size, n)`` with
``E[S^T S] = I``, built as ``Sketch(n, sketch_size, *, generator=None, dtype=None,
device=None)``, and applies to row blocks through ``apply_blocks`` (what
``JacobianOperator.matmat_blocks`` yields), so ``S (J V)`` never needs ``J V`` whole.
"""

from ._sketches import SKETCHES, GaussianSketch, SparseSignSketch, SRHTSketch, make_sketch

__all__ = ["GaussianSketch", "SRHTSketch", "SparseSignSketch", "make_sketch", "SKETCHES"]
