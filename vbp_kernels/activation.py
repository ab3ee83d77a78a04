"""The activations vbp's Triton kernels apply, as one jit helper: exact GELU, tanh GELU, or none."""

import triton
import triton.language as tl

ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2}
# Globals a jit function reads must be tl.constexpr: compiled Triton refuses plain floats (the interpreter
# does not check this).
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def activate(x, ACT: tl.constexpr):
    """x (fp32 tile) -> the activation ACTIVATIONS names by ACT, in fp32."""
    if ACT == 1:  # exact GELU, as nn.GELU() and timm's models
        return 0.5 * x * (1.0 + tl.math.erf(x * _SQRT_HALF))
    elif ACT == 2:  # nn.GELU(approximate="tanh"); tanh(u) = 1 - 2 / (exp(2u) + 1)
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))
    else:
        return x
