"""Count a model's MACs and parameters under fvcore's conventions, the ones the VBP paper reports.

MACs: one per multiply-add of linear and conv layers and of the two attention matmuls, plus 5 per
element of every affine layer norm (fvcore counts those too); activations, softmax and additions are
free. Counted by PyTorch's FlopCounterMode, which sees the matmuls inside fused attention kernels, and
vbp's own compact_mlp op (two GEMMs) of `vbp.compact`ed models.
"""

from typing import Callable

import torch
from torch import nn

from .batches import run_model
from .compact import CompactMlp
from .models import example_input

aten = torch.ops.aten


def _layer_norm_flop(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    elements = 1
    for d in input_shape:
        elements *= d
    per_element = 5 if weight_shape is not None else 4
    return 2 * per_element * elements  # FlopCounterMode counts 2 FLOPs per MAC; total is halved below


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _compact_mlp_flop(x_shape, w1_shape, b1_shape, w2_shape, *args, out_shape=None, **kwargs) -> int:
    tokens = 1
    for d in x_shape[:-1]:
        tokens *= d
    return 2 * tokens * (w1_shape[0] * w1_shape[1] + w2_shape[0] * w2_shape[1])


def _native_mha_flop(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's fused inference op (torchvision ViT/Swin in eval mode): the q, k, v and output
    projections and the two attention matmuls, as FLOPs (2 per MAC). query [B, L, E], key/value [B, S, E]."""
    batch, length, dim = query_shape
    source = key_shape[1]
    macs = batch * (2 * length * dim * dim + 2 * source * dim * dim + 2 * length * source * dim)
    return 2 * macs


_FVCORE_EXTRAS = {
    aten.native_layer_norm: _layer_norm_flop,
    # CPU's fused attention kernel, which FlopCounterMode does not know by itself.
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
    aten._native_multi_head_attention: _native_mha_flop,
}


def _extras() -> dict:
    extras = dict(_FVCORE_EXTRAS)
    if hasattr(torch.ops.vbp, "compact_mlp"):  # the native extension is built
        extras[torch.ops.vbp.compact_mlp] = _compact_mlp_flop
    return extras


@torch.inference_mode()
def macs_of(call: Callable[[], object]) -> int:
    """MACs of one call of `call` (no arguments; e.g. a language model's prefill), by the conventions of `count`."""
    from torch.utils import flop_counter  # imports triton: imported when used

    with flop_counter.FlopCounterMode(display=False, custom_mapping=_extras()) as counter:
        call()
    return counter.get_total_flops() // 2


@torch.inference_mode()
def count(model: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of a single input (see `example_input`)."""
    from torch.utils import flop_counter  # imports triton: imported when used

    x = example_input(model, input_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        if any(isinstance(m, CompactMlp) for m in model.modules()):
            # a first pass outside the count: the compact MLP times its kernels on its first call (kernel_choice)
            run_model(model, x, device)
        with flop_counter.FlopCounterMode(display=False, custom_mapping=_extras()) as counter:
            run_model(model, x, device)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() // 2, params
