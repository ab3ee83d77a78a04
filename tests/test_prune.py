"""The compensation identity: the pruned model computes the original with pruned activations held at their means."""

import copy

import pytest
import torch
from conftest import assert_close_to_scale, mean_replaced, random_batches, small_model

import vbp

MODELS = [
    ("deit_tiny_patch16_224", dict(img_size=64), (3, 64, 64)),
    ("swin_tiny_patch4_window7_224", dict(), (3, 224, 224)),
    ("convnext_tiny", dict(), (3, 64, 64)),
    ("convnext_tiny", dict(conv_mlp=True), (3, 64, 64)),
]


@pytest.mark.parametrize("name,kwargs,input_size", MODELS)
def test_compensation_identity(name, kwargs, input_size):
    model = small_model(name, **kwargs).double()
    stats = vbp.calibrate(model, random_batches(2, 2, input_size, dtype=torch.float64), progress=False)
    plan = vbp.select(stats, 0.5)
    pruned = vbp.prune(copy.deepcopy(model), plan, stats)
    x = random_batches(1, 2, input_size, seed=7, dtype=torch.float64)[0]
    with torch.no_grad():
        got, want = pruned(x), mean_replaced(model, plan, stats)(x)
        uncompensated = vbp.prune(copy.deepcopy(model), plan, compensation="none")(x)
        original = model(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (uncompensated - want).abs().max() > 1e-6  # the fold matters
    assert (original - want).abs().max() > 1e-6  # and pruning changed something
    assert sum(s.width for s in vbp.find_sites(pruned)) == sum(plan.kept_widths.values())


def test_pruned_model_is_an_ordinary_module(deit_tiny_small):
    stats = vbp.calibrate(deit_tiny_small, random_batches(1, 2, (3, 32, 32)), progress=False)
    pruned = vbp.prune(copy.deepcopy(deit_tiny_small), vbp.select(stats, 0.3), stats)
    x = random_batches(1, 2, (3, 32, 32), seed=3)[0]
    with torch.no_grad():
        y = pruned(x)
        torch.testing.assert_close(copy.deepcopy(pruned)(x), y, rtol=0, atol=0)
        assert_close_to_scale(torch.compile(pruned, backend="aot_eager")(x), y)
    reloaded = small_model("deit_tiny_patch16_224", img_size=32)
    for site, width in vbp.families.site_widths(pruned).items():
        dict((s.name, s) for s in vbp.find_sites(reloaded))[site].set_width(width)
    reloaded.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), y, rtol=0, atol=0)


def test_prune_rejects_stats_or_plan_of_another_model(deit_tiny_small):
    stats = vbp.calibrate(deit_tiny_small, random_batches(1, 1, (3, 32, 32)), progress=False)
    other = small_model("deit_small_patch16_224", img_size=32)
    with pytest.raises(vbp.VbpError, match="plan was made for"):
        vbp.prune(other, vbp.select(stats, 0.5), stats)
    other_stats = vbp.calibrate(other, random_batches(1, 1, (3, 32, 32)), progress=False)
    with pytest.raises(vbp.VbpError, match="statistics"):
        vbp.prune(copy.deepcopy(deit_tiny_small), vbp.select(stats, 0.5), other_stats)
    with pytest.raises(vbp.VbpError, match="needs the statistics"):
        vbp.prune(copy.deepcopy(deit_tiny_small), vbp.select(stats, 0.5))
