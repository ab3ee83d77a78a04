"""Count a model's MACs and parameters under fvcore's conventions, the ones the VBP paper reports.

MACs: one per multiply-add of linear and conv layers and of the two attention matmuls, plus 5 per
element of every affine layer norm (fvcore counts those too); activations, softmax and additions are
free. Counted by PyTorch's FlopCounterMode, which sees the matmuls inside fused attention kernels.
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _layer_norm_flop(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    elements = 1
    for d in input_shape:
        elements *= d
    per_element = 5 if weight_shape is not None else 4
    return 2 * per_element * elements  # FlopCounterMode counts 2 FLOPs per MAC; total is halved below


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_FVCORE_EXTRAS = {
    aten.native_layer_norm: _layer_norm_flop,
    # CPU's fused attention kernel, which FlopCounterMode does not know by itself.
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
}


@torch.inference_mode()
def count(model: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of a single input of `input_size` (C, H, W).

    input_size defaults to the model's timm pretrained_cfg input size.
    """
    if input_size is None:
        input_size = tuple(model.pretrained_cfg["input_size"])
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_FVCORE_EXTRAS) as counter:
            model(x)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() // 2, params
