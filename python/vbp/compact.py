"""CompactMlp: a drop-in inference module for a (pruned) timm Mlp that runs the native compact_mlp op."""

import torch
from torch import nn
from timm.layers import Mlp

from . import ops
from .errors import VbpError
from .sites import find_sites, gelu_kind


# Inference kernels CompactMlp can run: the extension's op (or its PyTorch fallback), or fc1 + GELU as one
# Triton kernel (CUDA; which is faster on a given GPU is for benchmarks/bench_compact_mlp.py to say).
KERNELS = {"native": ops.compact_mlp, "triton": ops.compact_mlp_triton}


class CompactMlp(nn.Module):
    """fc2(GELU(fc1(x))) with Linear fc1 [hidden, in] and fc2 [out, hidden]; x: [..., in] -> [..., out].

    Same inputs, outputs and state_dict keys (fc1.*, fc2.*) as the timm Mlp it replaces. Without gradients
    it runs `kernel` (a key of KERNELS); with gradients, the same maths in eager PyTorch. It has no dropout:
    it is meant for deployment.
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, approximate: str = "none", kernel: str = "native"):
        super().__init__()
        if fc2.in_features != fc1.out_features:
            raise VbpError(f"fc2 reads {fc2.in_features} features but fc1 gives {fc1.out_features}")
        if kernel not in KERNELS:
            raise VbpError(f"kernel must be one of {list(KERNELS)}, got '{kernel}'")
        self.fc1, self.fc2, self.approximate, self.kernel = fc1, fc2, approximate, kernel

    @classmethod
    def from_mlp(cls, mlp: nn.Module, kernel: str = "native") -> "CompactMlp":
        """The CompactMlp of a timm Mlp with Linear layers and a GELU activation (sharing its layers)."""
        kind = gelu_kind(getattr(mlp, "act", None))
        if (
            not isinstance(mlp, Mlp)
            or kind is None
            or not isinstance(mlp.fc1, nn.Linear)
            or not isinstance(mlp.fc2, nn.Linear)
            or not isinstance(mlp.norm, nn.Identity)
        ):
            raise VbpError("CompactMlp replaces timm Mlp blocks with Linear fc1/fc2, GELU and no norm")
        return cls(mlp.fc1, mlp.fc2, "none" if kind == "gelu" else "tanh", kernel)

    @classmethod
    def from_weights(
        cls,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        approximate: str = "none",
        kernel: str = "native",
    ) -> "CompactMlp":
        fc1 = nn.Linear(w1.shape[1], w1.shape[0], device=w1.device, dtype=w1.dtype)
        fc2 = nn.Linear(w2.shape[1], w2.shape[0], device=w2.device, dtype=w2.dtype)
        with torch.no_grad():
            for layer, w, b in ((fc1, w1, b1), (fc2, w2, b2)):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        return cls(fc1, fc2, approximate, kernel)

    def _bias(self, layer: nn.Linear) -> torch.Tensor:
        return layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.fc1.weight, self._bias(self.fc1), self.fc2.weight, self._bias(self.fc2), self.approximate)
        if torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad):
            return ops.compact_mlp_reference(*args)
        return KERNELS[self.kernel](*args)


def compact(model: nn.Module, kernel: str = "native") -> nn.Module:
    """Swap every timm Mlp site with Linear layers and GELU for a CompactMlp running `kernel`, in place;
    returns the model. Other sites (1x1-conv MLPs, other activations) are left as they are.
    """
    for site in find_sites(model):
        if isinstance(site.fc1, nn.Linear) and gelu_kind(site.act) is not None:
            parent_name, _, child = site.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, CompactMlp.from_mlp(site.block, kernel))
    return model
