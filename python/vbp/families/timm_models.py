"""timm models: created by name, rebuilt from (name, kwargs), with sites in `Mlp`, `ConvMlp` and `SwiGLU` blocks.

Mlp / ConvMlp: fc1 -> act -> fc2 (Linear or 1x1 Conv2d), SwiGLU: act(fc1_g(x)) * fc1_x(x) -> fc2; a block whose
norm layer sits between fc1 and fc2 is skipped, since a norm mixes neurons.
"""

import sys

import timm
import timm.layers.activations as timm_act
import torch
from timm.layers import ConvMlp, Mlp, SwiGLU
from torch import nn

from ..activations import register_gelu
from ..errors import VbpError
from ..sites import MlpSite, chain_problem
from . import register

register_gelu(timm_act.GELU, "gelu")
register_gelu(timm_act.GELUTanh, "gelu_tanh")


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VbpError(
            f"unknown model '{name}': not a timm model name (Hugging Face models are 'hf:DIR', torchvision ones "
            "'tv:NAME')" + (f"; similar timm names: {', '.join(close)}" if close else "")
        )
    return timm.create_model(name, pretrained=pretrained, **kwargs)


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


def example_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, *model.pretrained_cfg["input_size"])


def _site(model: nn.Module, name: str, block: nn.Module) -> tuple[MlpSite | None, str | None]:
    gated = isinstance(block, SwiGLU)
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
    sites, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, (Mlp, ConvMlp, SwiGLU)):
            site, reason = _site(model, name, module)
            if site is not None:
                sites.append(site)
            else:
                skipped.append(f"{name} ({reason})")
    return sites, skipped


FAMILY = register(
    sys.modules[__name__],
    "timm",
    "",
    looked_for="timm.layers.Mlp, ConvMlp and SwiGLU blocks (fc1 -> act -> fc2)",
    aliases=("timm:",),
)
