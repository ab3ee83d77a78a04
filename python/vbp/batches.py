"""Batches as the engine takes them: an input tensor, an (inputs, labels, ...) tuple, or a mapping of the
model's keyword arguments (a tokenizer's output, with an optional attention mask); running a model on one."""

from collections.abc import Mapping

import torch
from torch import nn


def model_inputs(batch):
    """A batch's model inputs: a tensor, the first item of an (inputs, labels, ...) tuple/list, or a mapping of
    the model's keyword arguments (a tokenizer's output)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batch_size(inputs) -> int:
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values())).shape[0]
    return inputs.shape[0]


def first_rows(inputs, n: int):
    """The first n samples of a batch's inputs."""
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def run_model(model: nn.Module, inputs, device: torch.device | str):
    """model(inputs) on `device`, as positional input or as keyword arguments; floating inputs take the model's
    dtype (token ids and masks stay integers)."""
    dtype = next(model.parameters()).dtype

    def placed(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, dtype if t.is_floating_point() else t.dtype, non_blocking=True)

    if isinstance(inputs, Mapping):
        return model(**{k: placed(v) for k, v in inputs.items()})
    return model(placed(inputs))


def padding_mask(inputs, device) -> torch.Tensor | None:
    """[B, T] bool, True for real tokens, from a mapping batch's `attention_mask`; None when there is none."""
    if isinstance(inputs, Mapping) and "attention_mask" in inputs:
        return inputs["attention_mask"].to(device).bool()
    return None
