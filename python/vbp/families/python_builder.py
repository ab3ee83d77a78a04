"""Models of your own ("py:MODULE:FUNCTION"): built by calling an importable function with keyword arguments.

`vbp.create_model("py:mypkg.models:build", width=512)` imports `mypkg.models` and calls `build(width=512)`;
the id and kwargs are recorded, so a pruned model saves and reloads without unpickling (the function is
imported and called again). Name its sites with a spec (`vbp.families.spec`) unless a family finds them.
"""

import importlib
import sys

import torch
from torch import nn

from ..errors import VbpError
from . import register

_SOURCE = "_vbp_python_source"  # {"model": "py:MODULE:FUNCTION", "kwargs": {...}} recorded by `create`
INPUT_SHAPE = "_vbp_input_shape"  # optional attribute a builder may set: the input shape `vbp.count` uses


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    module_name, _, function = name.partition(":")
    if not module_name or not function:
        raise VbpError(f"'py:{name}' does not name a builder; write py:MODULE:FUNCTION (e.g. py:mypkg.models:build)")
    try:
        builder = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise VbpError(f"cannot import the model builder py:{name}: {exc}") from exc
    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise VbpError(f"py:{name} returned {type(model).__name__}, not a torch.nn.Module")
    setattr(model, _SOURCE, {"model": f"py:{name}", "kwargs": kwargs})
    return model


def owns(model: nn.Module) -> bool:
    return hasattr(model, _SOURCE)


def model_id(model: nn.Module) -> str:
    return getattr(model, _SOURCE, {}).get("model", "")


def describe(model: nn.Module) -> dict:
    return dict(getattr(model, _SOURCE))


def build(desc: dict) -> nn.Module:
    return create(desc["model"].removeprefix("py:"), **desc.get("kwargs", {}))


def example_input(model: nn.Module) -> torch.Tensor:
    if not hasattr(model, INPUT_SHAPE):
        raise VbpError(f"give count() an input_size: the model has no '{INPUT_SHAPE}' attribute to take it from")
    return torch.zeros(1, *getattr(model, INPUT_SHAPE))


FAMILY = register(sys.modules[__name__], "Python builder", "py:")
