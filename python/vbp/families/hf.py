"""Hugging Face transformers models ("hf:DIR_OR_ID"): loaded with AutoModel, rebuilt from (class, config).

Sites, found by the module names transformers uses:
- BERT, RoBERTa, ...: a layer with `intermediate.dense` (then `intermediate.intermediate_act_fn`) read by
  `output.dense` (dropout, residual and LayerNorm come after fc2 and change nothing);
- ViT and DeiT (transformers 5), CLIP, DINOv2, SigLIP, ...: a module with `fc1` and `fc2` (activation
  `activation_fn` or `activation`);
- LLaMA, Qwen, Mistral, ...: a gated module with `gate_proj`, `up_proj` and `down_proj`.
A pruned model keeps its class and config; its narrower layers come from vbp's file (`vbp.load_pruned`),
since an HF config holds one `intermediate_size` for all layers.
"""

import os
import sys

import torch
from torch import nn

from ..activations import register_gelu
from ..errors import VbpError
from ..sites import MlpSite, chain_problem
from . import register

TEXT_LENGTH = 128  # tokens of the input `vbp.count` counts a text model at

# (producers, consumer, activation candidates), relative to the module that holds them.
_PATTERNS = (
    (("intermediate.dense",), "output.dense", ("intermediate.intermediate_act_fn",)),
    (("fc1",), "fc2", ("activation_fn", "activation", "act")),
    (("gate_proj", "up_proj"), "down_proj", ()),
)


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise VbpError("Hugging Face models need the transformers package: pip install transformers") from exc
    return transformers


def _register_gelus() -> None:
    try:
        from transformers import activations
    except ImportError:
        return
    register_gelu(activations.GELUActivation, "gelu")
    register_gelu(activations.NewGELUActivation, "gelu_tanh")
    if hasattr(activations, "GELUTanh"):
        register_gelu(activations.GELUTanh, "gelu_tanh")


def create(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """AutoModel.from_pretrained(name), always with its weights: a local folder works offline; an id needs the
    Hub (or its cache)."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    try:
        return transformers.AutoModel.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        where = "folder" if os.path.isdir(name) else "model id (no such local folder)"
        raise VbpError(f"cannot load the Hugging Face model '{name}' from that {where}: {exc}") from exc


def owns(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def model_id(model: nn.Module) -> str:
    return "hf:" + (getattr(model.config, "_name_or_path", "") or type(model).__name__)


def describe(model: nn.Module) -> dict:
    return {"model": model_id(model), "class": type(model).__name__, "config": model.config.to_dict()}


def build(desc: dict) -> nn.Module:
    transformers = _transformers()
    cls = getattr(transformers, desc.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise VbpError(f"'{desc.get('class')}' is not a transformers model class; the file is not a vbp HF model")
    return cls(cls.config_class.from_dict(desc["config"]))


def example_input(model: nn.Module) -> dict:
    cfg = model.config
    if hasattr(cfg, "image_size") and hasattr(cfg, "num_channels"):
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        return {"pixel_values": torch.zeros(1, cfg.num_channels, size, size)}
    return {"input_ids": torch.zeros(1, TEXT_LENGTH, dtype=torch.int64)}


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def find(model: nn.Module) -> tuple[list[MlpSite], list[str]]:
    if not owns(model):
        return [], []
    sites, skipped = [], []
    for name, module in model.named_modules():
        for producers, consumer, acts in _PATTERNS:
            layers = [_get(module, p) for p in (*producers, consumer)]
            if any(layer is None for layer in layers):
                continue
            problem = chain_problem(layers[:-1], layers[-1])
            if problem:
                skipped.append(f"{name} ({problem})")
                continue
            prefix = f"{name}." if name else ""
            act = next((a for a in acts if isinstance(_get(module, a), nn.Module)), None)
            sites.append(
                MlpSite(
                    name,
                    model,
                    tuple(prefix + p for p in producers),
                    prefix + consumer,
                    act=prefix + act if act else None,
                )
            )
    return sites, skipped


_register_gelus()
FAMILY = register(
    sys.modules[__name__],
    "Hugging Face",
    "hf:",
    looked_for="transformers models with intermediate.dense -> output.dense, fc1 -> fc2, or "
    "gate_proj/up_proj -> down_proj",
)
