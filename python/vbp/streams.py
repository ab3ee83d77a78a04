"""The residual stream each MLP site writes into, and how large it is.

A transformer's MLP adds W2 h to a residual stream that later layers read through a normalisation, so what an
error in that sum costs is its size relative to the stream's, not its absolute size: the streams of one model
differ by orders of magnitude across depth (SmolLM2-135M: a typical token's squared norm is ~10 in its first
block and ~10^5 in its middle ones), which makes raw output errors incomparable across layers.

The stream of a site is the input of its block: the nearest module above the site's consumer that is an item of
a ModuleList or Sequential (a decoder layer, a ViT block, a BERT layer), whose input's last dimension is the
consumer's output width. Its size is recorded per token as log ||x||^2 (`Moments` of width 1, so calibration
shards merge exactly): the mean of the log is a typical token's size that the few tokens with massive activations
(attention sinks, 10^3 x the others) do not dominate.
"""

import torch
from torch import nn

from .sites import MlpSite
from .stats import Moments


def stream_block(model: nn.Module, site: MlpSite) -> str | None:
    """The name of the block whose input is the residual stream `site` writes into (None when there is none)."""
    parts = site.consumer.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if isinstance(model.get_submodule(".".join(parts[: end - 1])), (nn.ModuleList, nn.Sequential)):
            return ".".join(parts[:end])
    return None


class StreamRecorder:
    """Running Moments [1] of log ||x||^2 over the real tokens of a block's input x [..., D] (D the stream's width)."""

    def __init__(self, moments: Moments, width: int):
        self.moments = moments
        self.width = width
        self.mask: torch.Tensor | None = None  # [B, T] True for real tokens, set per batch

    def hook(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.width:
            return
        energy = x.detach().double().square().sum(-1)
        if self.mask is not None and energy.shape == self.mask.shape:
            energy = energy[self.mask]
        log_energy = energy.reshape(-1, 1).clamp_min(torch.finfo(torch.float64).tiny).log()
        self.moments = self.moments.merge(Moments.of(log_energy))


def typical_energy(moments: Moments) -> float:
    """exp E[log ||x||^2]: the squared norm of a typical token of the stream."""
    return float(moments.mean.exp())
