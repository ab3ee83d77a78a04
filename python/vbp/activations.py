"""Which activation modules are GELU, and which form: the fused kernels (Triton calibration, compact MLP)
compute exact GELU ("gelu") and its tanh approximation ("gelu_tanh") themselves.

torch's nn.GELU is known here; model families register their own GELU classes (`register_gelu`).
"""

from torch import nn

_GELU_CLASSES: dict[type, str] = {}


def register_gelu(cls: type, kind: str) -> None:
    """Declare that modules of exactly class `cls` compute GELU of form `kind` ("gelu" or "gelu_tanh")."""
    if kind not in ("gelu", "gelu_tanh"):
        raise ValueError(f"kind must be 'gelu' or 'gelu_tanh', got '{kind}'")
    _GELU_CLASSES[cls] = kind


def gelu_kind(act: nn.Module | None) -> str | None:
    """The kernel name of a GELU module, "gelu" or "gelu_tanh"; None for other activations (or None)."""
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return _GELU_CLASSES.get(type(act))
