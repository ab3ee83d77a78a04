"""vbp's Triton kernels: pure functions of tensors, no model logic.

Importing this package imports Triton. On machines without a GPU the kernels run only under
TRITON_INTERPRET=1 (set before the first import), which the tests use.
"""

from .activation import ACTIVATIONS
from .gelu_welford import activation_moments
from .linear_activation import linear_activation

__all__ = ["ACTIVATIONS", "activation_moments", "linear_activation"]
