"""Save and load pruned models: safetensors weights plus JSON (timm name, kwargs, per-site widths).

Loading rebuilds the timm model by name, narrows each MLP site to its saved width and loads the
weights; nothing is ever unpickled.
"""

import json
import os

import torch
from torch import nn

from .errors import VbpError
from .files import read_safetensors, write_safetensors
from .models import create_model, model_kwargs, model_name
from .sites import find_sites

FORMAT = "vbp-model/1"


def _build(name: str, kwargs: dict, widths: dict[str, int], device: torch.device | str = "cpu") -> nn.Module:
    """The timm model `name(**kwargs)` with every MLP site narrowed to `widths` (weights uninitialised)."""
    with torch.device(device):
        model = create_model(name, **kwargs)
    sites = {s.name: s for s in find_sites(model)}
    if set(sites) != set(widths):
        raise VbpError(f"'{name}' built with {kwargs} has MLP sites {sorted(sites)[:3]}..., not the saved ones")
    for site_name, width in widths.items():
        sites[site_name].set_width(width)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike, name: str | None = None, kwargs: dict | None = None) -> None:
    """Write `model` (pruned or not) to one safetensors file at `path`, atomically.

    name / kwargs: the timm name and create_model keyword arguments that rebuild it (default: what timm
    recorded when it created the model). Checked before writing: the rebuilt skeleton must match.
    """
    name = name or model_name(model)
    kwargs = model_kwargs(model) if kwargs is None else kwargs
    if not name:
        raise VbpError("the model's timm name is unknown; pass name= (and kwargs=) to save_pruned")
    try:
        kwargs = json.loads(json.dumps(kwargs))
    except TypeError as exc:
        raise VbpError(f"the model's create_model kwargs are not JSON-serializable ({exc}); pass kwargs=") from exc
    widths = {s.name: s.width for s in find_sites(model)}
    state = model.state_dict()
    skeleton = _build(name, kwargs, widths, device="meta").state_dict()
    mismatched = [k for k in state if k not in skeleton or skeleton[k].shape != state[k].shape]
    if mismatched or len(skeleton) != len(state):
        raise VbpError(
            f"'{name}' with kwargs {kwargs} does not rebuild this model (first mismatched keys: "
            f"{mismatched[:3] or sorted(set(skeleton) - set(state))[:3]}); pass the right name= and kwargs="
        )
    write_safetensors(path, state, {"format": FORMAT, "model": name, "kwargs": kwargs, "widths": widths})


def load_pruned(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model written by `save_pruned`, in eval mode, on `device`."""
    state, meta = read_safetensors(path, FORMAT, "pruned model")
    model = _build(meta["model"], meta["kwargs"], meta["widths"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VbpError(f"{path} does not match the model it names ('{meta['model']}'): {exc}") from exc
    return model.to(device).eval()
