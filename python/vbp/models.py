"""Create timm models by name, with pretrained weights or a local checkpoint, and name them back."""

import os

import timm
import torch
from torch import nn

from .errors import VbpError


def create_model(
    name: str, pretrained: bool = False, checkpoint: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """`timm.create_model(name, **kwargs)` in eval mode, loading `checkpoint` (safetensors or a torch state dict).

    Raises VbpError for an unknown name or a missing or unreadable checkpoint.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VbpError(
            f"unknown model '{name}': not a timm model name" + (f"; similar names: {', '.join(close)}" if close else "")
        )
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise VbpError(f"checkpoint {checkpoint} does not exist")
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint is not None:
        try:
            # timm reads safetensors, and torch files with weights_only=True: never arbitrary unpickling.
            timm.models.load_checkpoint(model, str(checkpoint), strict=True)
        except Exception as exc:  # timm raises many kinds: corrupt file, wrong keys, wrong shapes
            raise VbpError(f"cannot load checkpoint {checkpoint} into '{name}': {exc}") from exc
    return model.eval()


def model_name(model: nn.Module) -> str:
    """The timm architecture name a model was created with ('' when it was not created by timm)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture", "")


def model_kwargs(model: nn.Module) -> dict:
    """The keyword arguments timm.create_model was given (timm records them), minus runtime placement."""
    return dict(getattr(model, "_model_args", {}))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
