"""vbp's Triton kernels: pure functions of tensors, no model logic.

Importing this package imports Triton. On machines without a GPU the kernels run only under
TRITON_INTERPRET=1 (set before the first import), which the tests use.
"""

import inspect
import os

from .activation import ACTIVATIONS
from .activation_moments import activation_moments
from .linear_activation import linear_activation

__all__ = ["ACTIVATIONS", "activation_moments", "linear_activation"]


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a loop bound into an index by int() of a one-element 1-D array, which
    NumPy 2.5 refuses ("only 0-dimensional arrays can be converted to Python scalars"): every `range` over a
    runtime value fails. Triton 3.8 squeezes the array first; do the same where the interpreter does not.
    Compiled kernels are not touched."""
    try:
        from triton.runtime import interpreter

        original = interpreter._patch_lang_tensor
        if "int(self.handle.data)" not in inspect.getsource(original):
            return
    except (ImportError, AttributeError, OSError, TypeError):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_index()
