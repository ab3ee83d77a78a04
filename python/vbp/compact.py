"""CompactMlp: a drop-in inference module for a (pruned) Linear MLP site that runs the native compact_mlp op."""

import torch
from torch import nn

from . import ops
from .activations import gelu_kind
from .errors import VbpError
from .families import find_sites
from .sites import MlpSite, set_submodule

# Inference kernels CompactMlp can run: the extension's op (or its PyTorch fallback), or fc1 + GELU as one
# Triton kernel (CUDA; which is faster on a given GPU is for benchmarks/bench_compact_mlp.py to say).
KERNELS = {"native": ops.compact_mlp, "triton": ops.compact_mlp_triton}


class CompactMlp(nn.Module):
    """fc2(GELU(fc1(x))) with Linear fc1 [hidden, in] and fc2 [out, hidden]; x: [..., in] -> [..., out].

    Where it replaces a whole MLP block (timm Mlp, torchvision MLP) it has the same inputs, outputs and
    state_dict keys (fc1.*, fc2.*). Without gradients it runs `kernel` (a key of KERNELS); with gradients, the
    same maths in eager PyTorch. It has no dropout: it is meant for deployment.
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, approximate: str = "none", kernel: str = "native"):
        super().__init__()
        if fc2.in_features != fc1.out_features:
            raise VbpError(f"fc2 reads {fc2.in_features} features but fc1 gives {fc1.out_features}")
        if kernel not in KERNELS:
            raise VbpError(f"kernel must be one of {list(KERNELS)}, got '{kernel}'")
        self.fc1, self.fc2, self.approximate, self.kernel = fc1, fc2, approximate, kernel

    @classmethod
    def from_site(cls, site: MlpSite, kernel: str = "native") -> "CompactMlp":
        """The CompactMlp of a non-gated site with Linear layers and a GELU activation module (sharing its layers)."""
        problem = compact_problem(site)
        if problem:
            raise VbpError(f"CompactMlp cannot replace site '{site.name}': {problem}")
        fc1, fc2 = site.producer_layers[0], site.consumer_layer
        return cls(fc1, fc2, "none" if gelu_kind(site.activation) == "gelu" else "tanh", kernel)

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


def compact_problem(site: MlpSite) -> str | None:
    """Why a site cannot run as a CompactMlp (None when it can)."""
    if site.gated:
        return "it is a gated MLP"
    if not (isinstance(site.producer_layers[0], nn.Linear) and isinstance(site.consumer_layer, nn.Linear)):
        return "its layers are not Linear"
    if gelu_kind(site.activation) is None:
        return "its activation is not a GELU module"
    return None


def compact(model: nn.Module, kernel: str = "native") -> nn.Module:
    """Run every non-gated Linear site with a GELU module as a CompactMlp with `kernel`, in place; returns
    the model. Other sites (1x1-conv or gated MLPs, other activations) are left as they are.

    A site whose MLP is one module (timm Mlp, torchvision MLP) has that module replaced. Elsewhere (HF BERT's
    intermediate/output pair, a user spec) fc1's place takes the CompactMlp, and the activation and fc2
    become identities, so the module around them computes the same.
    """
    for site in find_sites(model):
        if compact_problem(site):
            continue
        cm = CompactMlp.from_site(site, kernel)
        if site.block:  # a whole block below the root
            set_submodule(model, site.block, cm)
        else:
            set_submodule(model, site.producers[0], cm)
            set_submodule(model, site.act, nn.Identity())
            set_submodule(model, site.consumer, nn.Identity())
    return model
