"""An MLP site, family-neutral: the layers that make a hidden layer of neurons, and the layer that reads it.

    hidden = act(producer(x))                 one producer (fc1): timm Mlp, HF BERT/ViT/CLIP, torchvision MLP
    hidden = act(gate(x)) * up(x)             two producers (gate, up): SwiGLU, HF LLaMA/Qwen/Mistral
    y = consumer(hidden)                      the consumer (fc2 / down) reads the hidden value

Neuron j is row j of every producer and column j of the consumer. A site names its layers by module path
inside the model, reads their weights and narrows itself to kept neurons; the family adapters in
`vbp.families` only find sites (and rebuild models for loading). Nothing here knows a family's names.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import VbpError

# Layers a site can be made of: Linear, or 1x1 convolutions over NCHW maps (ConvNeXt's conv_mlp).
HIDDEN_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class MlpSite:
    """One prunable MLP.

    name: the site's name, the path of the module that holds it (e.g. "blocks.3.mlp", "encoder.layer.0").
    model: the model the paths below are relative to.
    producers: path of fc1, or of (gate, up) for a gated MLP.
    consumer: path of fc2 (down).
    act: path of the activation module applied to fc1's output (non-gated), when it is a module; used by the
        fused Triton calibration kernel and by `vbp.compact`.
    block: path of a module that computes exactly consumer(act(producer(x))), when there is one (timm Mlp,
        torchvision MLP): `vbp.compact` swaps it whole.
    """

    name: str
    model: nn.Module = field(repr=False)
    producers: tuple[str, ...]
    consumer: str
    act: str | None = None
    block: str | None = None

    @property
    def gated(self) -> bool:
        return len(self.producers) == 2

    @property
    def producer_layers(self) -> list[nn.Module]:
        return [self.model.get_submodule(p) for p in self.producers]

    @property
    def consumer_layer(self) -> nn.Module:
        return self.model.get_submodule(self.consumer)

    @property
    def activation(self) -> nn.Module | None:
        return self.model.get_submodule(self.act) if self.act is not None else None

    @property
    def width(self) -> int:
        """Number of hidden neurons (the producers' output features or channels)."""
        return self.producer_layers[0].weight.shape[0]

    @property
    def channel_dim(self) -> int:
        """Dimension of the hidden value that indexes neurons: -1 for Linear, 1 for 1x1 conv (NCHW)."""
        return 1 if isinstance(self.consumer_layer, nn.Conv2d) else -1

    @property
    def device(self) -> torch.device:
        return self.consumer_layer.weight.device

    def producer_weights(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight [C, in], bias [C] or None) of every producer."""
        return [(layer.weight.flatten(1), layer.bias) for layer in self.producer_layers]

    def consumer_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [out, C], bias [out] or None) of the consumer."""
        layer = self.consumer_layer
        return layer.weight.flatten(1), layer.bias

    def observe(self, fn) -> torch.utils.hooks.RemovableHandle:
        """Call fn(hidden) with the hidden value every time the consumer runs (a forward pre-hook)."""
        return self.consumer_layer.register_forward_pre_hook(lambda module, inputs: fn(inputs[0]))

    @torch.no_grad()
    def narrow(
        self,
        producers: list[tuple[torch.Tensor, torch.Tensor | None]],
        consumer: tuple[torch.Tensor, torch.Tensor | None],
    ) -> None:
        """Replace the layers with fresh ones of the same kind holding these weights ([K, in] / [out, K] and
        biases): the site then has K neurons. The consumer gains a bias where it had none and one is given."""
        for path, (w, b) in zip(self.producers, producers):
            self._replace(path, w, b)
        self._replace(self.consumer, *consumer)

    def set_width(self, width: int, consumer_bias: bool | None = None) -> None:
        """Replace the layers with uninitialised ones of `width` neurons (to load a saved pruned model into).

        consumer_bias: whether the new consumer has a bias (default: as the old one)."""
        for path in self.producers:
            set_submodule(self.model, path, _resized(self.model.get_submodule(path), out_features=width))
        old = self.consumer_layer
        set_submodule(self.model, self.consumer, _resized(old, in_features=width, bias=consumer_bias))

    def _replace(self, path: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        old = self.model.get_submodule(path)
        out_features, in_features = weight.shape
        new = _resized(old, in_features, out_features, bias=bias is not None)
        new.weight.copy_(weight.view_as(new.weight))
        if bias is not None:
            new.bias.copy_(bias)
        set_submodule(self.model, path, new)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _resized(
    layer: nn.Module, in_features: int | None = None, out_features: int | None = None, bias: bool | None = None
) -> nn.Module:
    """A fresh layer like `layer` (Linear or 1x1 Conv2d, same dtype and device) with other sizes, uninitialised."""
    w = layer.weight
    # Built on the meta device and then given storage: no time spent on an initialisation that is overwritten.
    kwargs = dict(bias=layer.bias is not None if bias is None else bias, device="meta", dtype=w.dtype)
    linear = isinstance(layer, nn.Linear)
    if in_features is None:  # (a width of 0 is a width)
        in_features = layer.in_features if linear else layer.in_channels
    if out_features is None:
        out_features = layer.out_features if linear else layer.out_channels
    if linear:
        new = nn.Linear(in_features, out_features, **kwargs)
    else:
        new = nn.Conv2d(in_features, out_features, kernel_size=1, **kwargs)
    return new.to_empty(device=w.device)


def layer_problem(layer: nn.Module) -> str | None:
    """Why `layer` cannot be a site's producer or consumer (None when it can)."""
    if not isinstance(layer, HIDDEN_LAYERS):
        return f"{type(layer).__name__} is not a Linear or 1x1 Conv2d layer"
    if isinstance(layer, nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.groups != 1 or layer.stride != (1, 1)):
        return "a convolution other than plain 1x1"
    return None


def chain_problem(producers: list[nn.Module], consumer: nn.Module) -> str | None:
    """Why these layers do not form an MLP site (kinds, or shapes that do not chain); None when they do."""
    for layer in (*producers, consumer):
        problem = layer_problem(layer)
        if problem:
            return problem
    widths = {p.weight.shape[0] for p in producers}
    if len(widths) != 1:
        return f"the producers have different output widths {sorted(widths)}"
    if len({p.weight.shape[1] for p in producers}) != 1:
        return "the producers read inputs of different widths"
    width, reads = widths.pop(), consumer.weight.shape[1]
    if reads != width:
        return f"the consumer reads {reads} features but the producers give {width}"
    return None


def check_sites(sites: list[MlpSite]) -> list[MlpSite]:
    """Raise VbpError when two sites share a layer (a spec or family that matched one MLP twice)."""
    seen: dict[str, str] = {}
    for site in sites:
        for path in (*site.producers, site.consumer):
            if path in seen:
                raise VbpError(f"layer '{path}' belongs to two MLP sites ('{seen[path]}' and '{site.name}')")
            seen[path] = site.name
    return sites


@torch.no_grad()
def hidden_channels_last(h: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """View a hidden value as [N, C]: every token or spatial position is one sample."""
    if channel_dim != -1:
        h = h.movedim(channel_dim, -1)
    return h.reshape(-1, h.shape[-1])
