"""Which activation modules are GELU, and which form: the fused kernels (Triton calibration, compact MLP)
compute exact GELU ("gelu") and its tanh approximation ("gelu_tanh") themselves.

torch's nn.GELU is known here; model families register their own GELU classes in `GELU_CLASSES`
(`register_gelu`), by qualified name ("timm.layers.activations.GELU"), so that registering one imports nothing.
"""

from torch import nn

from .errors import VbpError
from .registry import Registry

GELU_KINDS = ("gelu", "gelu_tanh")
GELU_CLASSES: Registry[str, str] = Registry("GELU class")  # qualified class name -> its kind


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_gelu(cls: type | str, kind: str) -> None:
    """Declare that modules of exactly class `cls` (or its qualified name) compute GELU of form `kind` ("gelu"
    or "gelu_tanh")."""
    if kind not in GELU_KINDS:
        raise VbpError(f"a GELU kind is one of {', '.join(GELU_KINDS)}, got '{kind}'")
    GELU_CLASSES.register(cls if isinstance(cls, str) else qualified_name(cls), kind)


def gelu_kind(act: nn.Module | None) -> str | None:
    """The kernel name of a GELU module, "gelu" or "gelu_tanh"; None for other activations (or None)."""
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    name = qualified_name(type(act))
    return GELU_CLASSES.get(name) if name in GELU_CLASSES else None
