"""The Python face of vbp's native ops: the C++/CUDA extension `vbp._C` when it is built, PyTorch otherwise.

Both paths give the same results (tests compare them); `has_extension()` says which one runs.
"""

import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F

from .errors import VbpError
from .kernel_choice import MeasuredChoice


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


def slice_mlp_reference(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1[keep, :], b1[keep], w2[:, keep]). w1: [hidden, in]; b1: [hidden]; w2: [out, hidden]; keep: int64 [K]."""
    return w1.index_select(0, keep), b1.index_select(0, keep), w2.index_select(1, keep)


def slice_mlp(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compact fc1/fc2 weights of the kept neurons (shapes as in `slice_mlp_reference`), by one gather
    pass per tensor in the extension when it is built."""
    if w1.dim() != 2 or w2.dim() != 2 or b1.dim() != 1 or keep.dim() != 1:
        raise VbpError("slice_mlp expects w1 [hidden, in], b1 [hidden], w2 [out, hidden], keep [K]")
    if _HAS_EXTENSION:
        return tuple(torch.ops.vbp.slice_mlp(w1, b1, w2, keep.to(w1.device)))
    return slice_mlp_reference(w1, b1, w2, keep.to(w1.device))


def compact_mlp_reference(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, approximate: str = "none"
) -> torch.Tensor:
    """fc2(GELU(fc1(x))) in eager PyTorch. x: [..., in] -> [..., out]."""
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)


def _native_compact_mlp(x, w1, b1, w2, b2, approximate):
    return torch.ops.vbp.compact_mlp(x, w1, b1, w2, b2, approximate)


# On the CPU, per shape, the faster of the extension's op and eager PyTorch (see kernel_choice).
_CPU_CHOICE = MeasuredChoice(_native_compact_mlp, compact_mlp_reference)


def compact_mlp(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, approximate: str = "none"
) -> torch.Tensor:
    """Inference forward of a (pruned) MLP: the extension's op when built (on the CPU, oneDNN GEMMs with bias and
    GELU fused into fc1's epilogue, unless eager PyTorch measured faster for this shape on this CPU; on CUDA,
    biased cuBLAS GEMMs with GELU in place), `compact_mlp_reference` otherwise. No autograd: use it under
    torch.no_grad/inference_mode."""
    if not _HAS_EXTENSION:
        return compact_mlp_reference(x, w1, b1, w2, b2, approximate)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():  # a traced graph holds the op itself
        key = (x.dtype, x.numel() // x.shape[-1], *w1.shape, w2.shape[0], approximate, torch.get_num_threads())
        return _CPU_CHOICE(key, x, w1, b1, w2, b2, approximate)
    return _native_compact_mlp(x, w1, b1, w2, b2, approximate)


def compact_mlp_triton(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, approximate: str = "none"
) -> torch.Tensor:
    """The same MLP with fc1, its bias and GELU in one Triton kernel (`vbp_kernels.linear_activation`, the GELU
    in fc1's epilogue) and fc2 as one biased GEMM (cuBLAS on CUDA). For CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1. x: [..., in] -> [..., out]; no autograd."""
    from vbp_kernels import linear_activation

    if approximate not in ("none", "tanh"):
        raise VbpError(f"approximate must be 'none' or 'tanh', got '{approximate}'")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise VbpError(
            f"the Triton MLP kernel runs on CUDA tensors, got {x.device} (TRITON_INTERPRET=1 runs it interpreted on "
            "the CPU, slowly); use the native kernel there"
        )
    rows = x.reshape(-1, x.shape[-1])
    hidden = linear_activation(rows, w1, b1, "gelu" if approximate == "none" else "gelu_tanh")
    return torch.addmm(b2, hidden, w2.t()).view(*x.shape[:-1], w2.shape[0])
