"""Find the MLP blocks of a model: the hidden layer `h = act(fc1(x))` that VBP prunes, and `fc2` that reads it.

A site is one such block. Supported: timm `Mlp` (ViT, DeiT, Swin, ConvNeXt with Linear layers or
1x1 convolutions) and timm `ConvMlp`, whenever nothing between the activation and fc2 mixes channels.
"""

from dataclasses import dataclass

import timm.layers.activations as timm_act
import torch
from torch import nn
from timm.layers import ConvMlp, Mlp

from .errors import VbpError

SUPPORTED_BLOCKS = (Mlp, ConvMlp)
_HIDDEN_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class MlpSite:
    """One prunable MLP block.

    name: the block's module path in the model (e.g. "blocks.3.mlp").
    block: the module, holding `fc1`, `act` and `fc2`.
    """

    name: str
    block: nn.Module

    @property
    def fc1(self) -> nn.Module:
        return self.block.fc1

    @property
    def fc2(self) -> nn.Module:
        return self.block.fc2

    @property
    def act(self) -> nn.Module:
        return self.block.act

    @property
    def width(self) -> int:
        """Number of hidden neurons (fc1's output features or channels)."""
        return self.fc1.weight.shape[0]

    @property
    def channel_dim(self) -> int:
        """Dimension of the hidden activation that indexes neurons: -1 for Linear, 1 for 1x1 conv (NCHW)."""
        return 1 if isinstance(self.fc1, nn.Conv2d) else -1

    def set_width(self, width: int, fc2_bias: bool | None = None) -> None:
        """Replace fc1 and fc2 with fresh layers of `width` hidden neurons (same kind, dtype, device).

        fc2_bias: whether the new fc2 has a bias (default: as the old one).
        """
        self.block.fc1 = _resized(self.fc1, out_features=width)
        self.block.fc2 = _resized(self.fc2, in_features=width, bias=fc2_bias)


def _resized(
    layer: nn.Module, in_features: int | None = None, out_features: int | None = None, bias: bool | None = None
) -> nn.Module:
    w = layer.weight
    # Built on the meta device and then given storage: no time spent on an initialisation that is overwritten.
    kwargs = dict(bias=layer.bias is not None if bias is None else bias, device="meta", dtype=w.dtype)
    if isinstance(layer, nn.Linear):
        new = nn.Linear(in_features or layer.in_features, out_features or layer.out_features, **kwargs)
    else:
        new = nn.Conv2d(in_features or layer.in_channels, out_features or layer.out_channels, kernel_size=1, **kwargs)
    return new.to_empty(device=w.device)


def _unsupported_reason(block: nn.Module) -> str | None:
    if not (isinstance(block.fc1, _HIDDEN_LAYERS) and isinstance(block.fc2, _HIDDEN_LAYERS)):
        return "fc1/fc2 are not Linear or Conv2d layers"
    for conv in (m for m in (block.fc1, block.fc2) if isinstance(m, nn.Conv2d)):
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1):
            return "fc1/fc2 are convolutions other than plain 1x1"
    # timm Mlp applies `norm` after the activation: a norm mixes neurons, so a pruned neuron is no longer a constant.
    if isinstance(block, Mlp) and not isinstance(block.norm, nn.Identity):
        return "a normalisation layer sits between the activation and fc2"
    if isinstance(block, ConvMlp) and not isinstance(block.norm, nn.Identity):
        return "a normalisation layer sits on fc1's output"
    return None


def find_sites(model: nn.Module) -> list[MlpSite]:
    """All prunable MLP blocks of `model`, in module order.

    Raises VbpError when there are none, naming what was looked for and any blocks that were skipped.
    """
    sites, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_BLOCKS):
            reason = _unsupported_reason(module)
            if reason is None:
                sites.append(MlpSite(name, module))
            else:
                skipped.append(f"{name} ({reason})")
    if not sites:
        looked_for = ", ".join(f"timm.layers.{cls.__name__}" for cls in SUPPORTED_BLOCKS)
        detail = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise VbpError(
            f"{type(model).__name__} has no prunable MLP block: looked for {looked_for} modules with "
            f"fc1 -> act -> fc2 (Linear or 1x1 Conv2d){detail}. vbp supports timm ViT/DeiT, Swin and ConvNeXt models."
        )
    return sites


def site_widths(model: nn.Module) -> dict[str, int]:
    """Hidden width of every site, by site name."""
    return {site.name: site.width for site in find_sites(model)}


@torch.no_grad()
def hidden_channels_last(h: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """View a hidden activation as [N, C]: every token or spatial position is one sample."""
    if channel_dim != -1:
        h = h.movedim(channel_dim, -1)
    return h.reshape(-1, h.shape[-1])


def gelu_kind(act: nn.Module) -> str | None:
    """The kernel name of a GELU module (torch's or timm's): "gelu" or "gelu_tanh"; None for other activations."""
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return {timm_act.GELU: "gelu", timm_act.GELUTanh: "gelu_tanh"}.get(type(act))
