"""timm models: created by name, rebuilt from (name, kwargs), with sites in `Mlp`, `ConvMlp` and `SwiGLU` blocks.

Mlp / ConvMlp: fc1 -> act -> fc2 (Linear or 1x1 Conv2d), SwiGLU: act(fc1_g(x)) * fc1_x(x) -> fc2; a block whose
norm layer sits between fc1 and fc2 is skipped, since a norm mixes neurons.
"""

import sys

import torch
from torch import nn

from ..activations import register_gelu
from ..errors import VbpError
from ..sites import MlpSite, chain_problem
from .base import register

register_gelu("timm.layers.activations.GELU", "gelu")
register_gelu("timm.layers.activations.GELUTanh", "gelu_tanh")


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    import timm  # imported when used: `import vbp` and `vbp --help` stay fast

    from . import digits_vit  # noqa: F401  (registers the embedded default with timm)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VbpError(
            f"unknown model '{name}': not a timm model name (Hugging Face models are 'hf:DIR', torchvision ones "
            "'tv:NAME')" + (f"; similar timm names: {', '.join(close)}" if close else "")
        )
    try:
        if pretrained and not {"pretrained_cfg", "pretrained_cfg_overlay"} & kwargs.keys():
            kwargs.update(_cached_weights(name))
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:  # a download that failed, an unknown tag ("name.tag"), bad kwargs
        message = " ".join(str(exc).split())
        weights = " with its pretrained weights" if pretrained else ""
        raise VbpError(f"cannot create the timm model '{name}'{weights}: {message}") from exc


def _cached_weights(name: str) -> dict:
    """create_model arguments that read `name`'s pretrained weights from the local cache when they are there
    (timm would ask the Hub first); a VbpError at once when they are not and their server is out of reach."""
    import huggingface_hub
    from timm.models import get_pretrained_cfg

    from .hf import NO_NETWORK, in_torch_hub_cache, online

    cfg = get_pretrained_cfg(name)
    if cfg is not None and (cfg.file or cfg.state_dict):
        return {}
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise VbpError(f"timm has no pretrained weights for '{name}': leave out --pretrained, or give --checkpoint")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            path = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(path, str):
                return {"pretrained_cfg_overlay": {"file": path, "custom_load": cfg.custom_load}}
        server = huggingface_hub.constants.ENDPOINT
    elif in_torch_hub_cache(cfg.url):
        return {}
    else:
        server = cfg.url
    if not online(server):
        raise VbpError(f"cannot download the pretrained weights of '{name}': {NO_NETWORK}")
    return {}


def owns(model: nn.Module) -> bool:
    return bool(model_id(model))


def model_id(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture", "")


def describe(model: nn.Module) -> dict:
    """timm's name and the create_model keyword arguments timm recorded (`_model_args`)."""
    return {"model": model_id(model), "kwargs": dict(getattr(model, "_model_args", {}))}


def build(desc: dict) -> nn.Module:
    return create(desc["model"], **desc.get("kwargs", {}))


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model was built for: its patch embedding's image size (a model created with another img_size
    than its pretrained config's) and its in_chans, else its pretrained config's input size."""
    args = getattr(model, "_model_args", {})
    channels, height, width = model.pretrained_cfg["input_size"]
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or args.get("img_size")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    return args.get("in_chans", channels), height, width


def example_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, *input_size(model))


def _site(model: nn.Module, name: str, block: nn.Module) -> tuple[MlpSite | None, str | None]:
    gated = type(block).__name__ == "SwiGLU"
    producers = ("fc1_g", "fc1_x") if gated else ("fc1",)
    # Mlp and SwiGLU apply `norm` after the activation, ConvMlp before it: either way it mixes neurons.
    if not isinstance(block.norm, nn.Identity):
        return None, "a normalisation layer sits between fc1 and fc2"
    problem = chain_problem([block.get_submodule(p) for p in producers], block.fc2)
    if problem:
        return None, problem
    prefix = f"{name}." if name else ""
    producers = tuple(prefix + p for p in producers)
    return MlpSite(name, model, producers, prefix + "fc2", act=prefix + "act", block=None if gated else name), None


def find(model: nn.Module) -> tuple[list[MlpSite], list[str]]:
    if "timm" not in sys.modules:  # no model holds timm blocks before timm is imported
        return [], []
    from timm.layers import ConvMlp, Mlp, SwiGLU

    sites, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, (Mlp, ConvMlp, SwiGLU)):
            site, reason = _site(model, name, module)
            if site is not None:
                sites.append(site)
            else:
                skipped.append(f"{name} ({reason})")
    return sites, skipped


register(
    sys.modules[__name__],
    "timm",
    "",
    looked_for="timm.layers.Mlp, ConvMlp and SwiGLU blocks (fc1 -> act -> fc2)",
    aliases=("timm:",),
)
