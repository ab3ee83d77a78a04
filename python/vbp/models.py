"""Create models by id, from any family, with pretrained weights or a local checkpoint; name them back.

Ids: a timm name ("deit_small_patch16_224"), "hf:DIR_OR_ID" (Hugging Face), "tv:NAME" (torchvision) or
"py:MODULE:FUNCTION" (a builder of your own); see `vbp.families`.
"""

import os

import torch
from torch import nn

from .errors import VbpError
from .families import family_for_id, family_of
from .files import check_input_file


def create_model(
    name: str, pretrained: bool = False, checkpoint: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """The model `name` in eval mode, loading `checkpoint` (safetensors or a torch state dict) if given.

    Raises VbpError for an unknown name or a missing or unreadable checkpoint.
    """
    if checkpoint is not None:
        check_input_file(checkpoint, "checkpoint")  # missing, a folder, unreadable: said before the model is built
    family, short = family_for_id(name)
    model = family.create(short, pretrained=pretrained, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name)
    return model.eval()


def load_checkpoint(model: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load weights into `model`, strictly: safetensors, or a torch file read with weights_only (never arbitrary
    unpickling), holding a state dict or one under "state_dict"/"model"."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except Exception as exc:  # corrupt or foreign file: each library raises its own kind
        text = " ".join(str(exc).split()).split(". ")[0][:120]
        raise VbpError(
            f"cannot load checkpoint {path} into '{name}': it cannot be read ({type(exc).__name__}: {text}); give a "
            "safetensors file or a torch state dict"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VbpError(
            f"cannot load checkpoint {path} into '{name}': it holds no state dict (name -> tensor); give a "
            "safetensors file or a torch state dict"
        )
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        hint = (
            "it is a pruned model written by vbp: load it with --pruned FILE (vbp.load_pruned)"
            if _is_vbp_model(path)
            else "give a checkpoint of this architecture, or the --model (and --num-classes) it was trained as"
        )
        raise VbpError(f"cannot load checkpoint {path} into '{name}': {problem}; {hint}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # what the comparison above cannot see (a model's own load hooks)
        raise VbpError(f"cannot load checkpoint {path} into '{name}': {' '.join(str(exc).split())[:300]}") from exc


def _state_mismatch(expected: dict, state: dict) -> str:
    """One line on how `state` differs from the model's state dict `expected` ('' when its keys and shapes fit)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} tensors of other shapes (first: {k}, {tuple(state[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} in the model)"
        )
    return "; ".join(parts)


def _is_vbp_model(path) -> bool:
    """Whether `path` is a safetensors file vbp.save_pruned wrote."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return '"vbp-model/' in (f.metadata() or {}).get("vbp", "")
    except Exception:  # not safetensors: not vbp's
        return False


def model_name(model: nn.Module) -> str:
    """The id a model can be created again by ('' when no family knows where it came from)."""
    family = family_of(model)
    return family.model_id(model) if family else ""


def model_source(model: nn.Module) -> dict:
    """What rebuilds the model's architecture: {"model": id, ...} as its family describes it (JSON-able)."""
    family = family_of(model)
    if family is None:
        raise VbpError(
            f"vbp does not know how to rebuild this {type(model).__name__}: create it with vbp.create_model "
            "(a timm name, hf:DIR, tv:NAME or py:MODULE:FUNCTION), or pass name= (and kwargs=)"
        )
    return family.describe(model)


def build_model(source: dict) -> nn.Module:
    """The architecture `model_source` described, with fresh weights."""
    family, _ = family_for_id(source["model"])
    return family.build(source)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def example_input(model: nn.Module, input_size: tuple[int, ...] | None = None):
    """One zero input: of `input_size` (C, H, W) when given, else what the model's family says (a timm model's
    pretrained_cfg input size, an HF vision model's image size, 128 tokens for an HF text model, or the input
    shape of a py: model, see `vbp.families.python_builder`)."""
    if input_size is not None:
        return torch.zeros(1, *input_size)
    family = family_of(model)
    if family is None:
        raise VbpError(f"give count() an input_size: vbp does not know what input a {type(model).__name__} takes")
    return family.example_input(model)
