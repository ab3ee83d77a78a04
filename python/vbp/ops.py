"""The Python face of vbp's native ops: the C++/CUDA extension `vbp._C` when it is built, PyTorch otherwise.

Both paths give the same results (tests compare them); `has_extension()` says which one runs.
"""

import importlib.util
import warnings

import torch

from .errors import VbpError


def _load_extension() -> bool:
    if importlib.util.find_spec("vbp._C") is None:
        return False
    try:
        from . import _C  # noqa: F401  (importing registers torch.ops.vbp.*)
    except ImportError as exc:
        warnings.warn(f"vbp._C is built but does not load ({exc}); using the PyTorch path. Rebuild with `make`.")
        return False
    return True


_HAS_EXTENSION = _load_extension()


def has_extension() -> bool:
    """True when the compiled ops of vbp._C are registered."""
    return _HAS_EXTENSION


def extension_has_cuda() -> bool:
    """True when vbp._C was compiled with its CUDA kernels."""
    return _HAS_EXTENSION and torch.ops.vbp.built_with_cuda()


def fold_bias_reference(w2: torch.Tensor, b2: torch.Tensor, mean: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """b2 + w2[:, pruned] @ mean[pruned], accumulated in float64, returned in b2's dtype.

    w2: [out, hidden]; b2: [out]; mean: [hidden]; pruned: int64 [P] indices into hidden.
    """
    fold = w2.index_select(1, pruned).double() @ mean.index_select(0, pruned).double()
    return (b2.double() + fold).to(b2.dtype)


def fold_bias(w2: torch.Tensor, b2: torch.Tensor, mean: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Mean-shift compensation: the new fc2 bias once the `pruned` neurons are replaced by their means.

    Shapes as in `fold_bias_reference`. Uses the extension's deterministic kernel when built.
    """
    if w2.dim() != 2 or b2.dim() != 1 or mean.dim() != 1 or pruned.dim() != 1:
        raise VbpError("fold_bias expects w2 [out, hidden], b2 [out], mean [hidden], pruned [P]")
    if _HAS_EXTENSION:
        return torch.ops.vbp.fold_bias(w2, b2, mean.to(w2.device), pruned.to(w2.device))
    return fold_bias_reference(w2, b2, mean.to(w2.device), pruned.to(w2.device))
