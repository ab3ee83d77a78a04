"""Models of your own ("py:MODULE:FUNCTION"): built by calling an importable function with keyword arguments.

`vbp.create_model("py:mypkg.models:build", width=512)` imports `mypkg.models` and calls `build(width=512)`;
the id and kwargs are recorded, so a pruned model saves and reloads without unpickling (the function is
imported and called again). Name its sites with a spec (`vbp.families.spec`) unless a family finds them.

vbp runs such a model on inputs of its input shape (what `vbp.count` counts, synthetic data, the data-flow
check of a site spec): the `_vbp_input_shape` the builder may set, or one given (`--input-size`), or that of
the first input of the data a command reads (`vbp.commands.options.settle_input_shape`). It is saved with the model.
"""

import importlib
import sys

import torch
from torch import nn

from ..errors import VbpError
from ..model_attributes import INPUT_SHAPE, PYTHON_SOURCE
from .base import register


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    if pretrained:
        raise VbpError(f"--pretrained does not apply to py:{name}: py: models take their weights from --checkpoint")
    module_name, _, function = name.partition(":")
    if not module_name or not function:
        raise VbpError(f"'py:{name}' does not name a builder; write py:MODULE:FUNCTION (e.g. py:mypkg.models:build)")
    try:
        builder = getattr(importlib.import_module(module_name), function)
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raises while it is imported
        raise VbpError(f"cannot import the model builder py:{name}: {_one_line(exc)}") from exc
    try:
        model = builder(**kwargs)
    except Exception as exc:  # the user's code: any exception, said in one line
        raise VbpError(f"the builder py:{name} raised {_one_line(exc)}; fix it or its arguments") from exc
    if not isinstance(model, nn.Module):
        raise VbpError(f"py:{name} returned {type(model).__name__}, not a torch.nn.Module")
    setattr(model, PYTHON_SOURCE, {"model": f"py:{name}", "kwargs": kwargs})
    return model


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def owns(model: nn.Module) -> bool:
    return hasattr(model, PYTHON_SOURCE)


def model_id(model: nn.Module) -> str:
    return getattr(model, PYTHON_SOURCE, {}).get("model", "")


def describe(model: nn.Module) -> dict:
    desc = dict(getattr(model, PYTHON_SOURCE))
    if input_shape(model) is not None:
        desc["input_shape"] = list(input_shape(model))
    return desc


def build(desc: dict) -> nn.Module:
    model = create(desc["model"].removeprefix("py:"), **desc.get("kwargs", {}))
    if desc.get("input_shape"):
        set_input_shape(model, desc["input_shape"])
    return model


def input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one input of a py: model (no batch dimension), when it is known."""
    shape = getattr(model, INPUT_SHAPE, None)
    return tuple(shape) if shape is not None else None


def set_input_shape(model: nn.Module, shape) -> None:
    model.__dict__[INPUT_SHAPE] = tuple(int(d) for d in shape)


def parse_input_size(text: str) -> tuple[int, ...]:
    """'3,224,224' -> (3, 224, 224)."""
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise VbpError(f"--input-size '{text}' is not a shape; give positive sizes like 3,224,224 (C,H,W)")
    return shape


def example_input(model: nn.Module) -> torch.Tensor:
    if input_shape(model) is None:
        raise VbpError(
            f"{model_id(model)} has no input size for vbp to run it at (MACs, synthetic data, the site check): give "
            f"--input-size C,H,W (count(model, input_size=...)), or set {INPUT_SHAPE} on the model in its builder"
        )
    return torch.zeros(1, *input_shape(model))


register(sys.modules[__name__], "Python builder", "py:")
