"""CompactMlp and vbp.compact: the same outputs and state_dict as the timm Mlp they replace."""

import copy

import pytest
import torch
from timm.layers import Mlp

import vbp
from conftest import random_batches, small_model


def test_compact_mlp_equals_timm_mlp_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    mlp = Mlp(24, 37, act_layer=torch.nn.GELU).eval()
    cm = vbp.CompactMlp.from_mlp(copy.deepcopy(mlp))
    assert cm.state_dict().keys() == mlp.state_dict().keys()
    x = torch.randn(3, 11, 24)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), mlp(x), rtol=1e-6, atol=1e-6)
    x.requires_grad_(True)
    cm(x).sum().backward()  # with gradients it runs the eager path, so it trains too
    assert x.grad is not None and cm.fc1.weight.grad is not None
    rebuilt = vbp.CompactMlp.from_weights(mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    rebuilt.load_state_dict(mlp.state_dict())


def test_compact_swaps_the_sites_of_a_pruned_model(deit_tiny_small):
    stats = vbp.calibrate(deit_tiny_small, random_batches(1, 2, (3, 32, 32)), progress=False)
    pruned = vbp.prune(copy.deepcopy(deit_tiny_small), vbp.select(stats, 0.5), stats)
    compacted = vbp.compact(copy.deepcopy(pruned))
    assert all(isinstance(b.mlp, vbp.CompactMlp) for b in compacted.blocks)
    assert compacted.state_dict().keys() == pruned.state_dict().keys()
    x = random_batches(1, 3, (3, 32, 32), seed=4)[0]
    with torch.inference_mode():
        torch.testing.assert_close(compacted(x), pruned(x), rtol=1e-5, atol=1e-5)
        traced = torch.compile(compacted, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(traced(x), pruned(x), rtol=1e-5, atol=1e-5)


def test_conv_sites_are_left_alone():
    model = small_model("convnext_atto", conv_mlp=True)
    vbp.compact(model)
    assert not any(isinstance(m, vbp.CompactMlp) for m in model.modules())


def test_from_mlp_refuses_other_blocks():
    with pytest.raises(vbp.VbpError, match="CompactMlp replaces"):
        vbp.CompactMlp.from_mlp(Mlp(8, 16, act_layer=torch.nn.ReLU))
