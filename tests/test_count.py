"""MACs and parameters of pruned DeiT-T/S/B against the VBP paper's Table 10 (ImageNet-1k), every rate."""

import copy

import pytest
import timm
import torch

import vbp
from vbp.stats import Moments, Stats

# rate -> (GMACs, M params), from the paper's supplementary Table 10.
TABLE_10 = {
    "deit_base_patch16_224": {
        0: (17.58, 86.57),
        0.05: (17.02, 83.73),
        0.10: (16.46, 80.90),
        0.15: (15.91, 78.07),
        0.20: (15.35, 75.24),
        0.25: (14.79, 72.40),
        0.30: (14.23, 69.57),
        0.35: (13.67, 66.74),
        0.40: (13.12, 63.90),
        0.45: (12.56, 61.07),
        0.50: (12.00, 58.24),
    },
    "deit_small_patch16_224": {
        0: (4.61, 22.05),
        0.05: (4.47, 21.34),
        0.10: (4.33, 20.63),
        0.15: (4.19, 19.92),
        0.20: (4.05, 19.22),
        0.25: (3.91, 18.51),
        0.30: (3.77, 17.80),
        0.35: (3.63, 17.09),
        0.40: (3.49, 16.38),
        0.45: (3.35, 15.67),
        0.50: (3.21, 14.96),
    },
    "deit_tiny_patch16_224": {
        0: (1.26, 5.72),
        0.05: (1.22, 5.54),
        0.10: (1.19, 5.36),
        0.15: (1.15, 5.18),
        0.20: (1.12, 5.01),
        0.25: (1.08, 4.83),
        0.30: (1.05, 4.65),
        0.35: (1.01, 4.48),
        0.40: (0.978, 4.30),
        0.45: (0.943, 4.12),
        0.50: (0.908, 3.94),
    },
}


def random_stats(model) -> Stats:
    """Statistics with random variances: for DeiT the counts depend only on how many neurons go."""
    g = torch.Generator().manual_seed(0)
    sites = {}
    for s in vbp.find_sites(model):
        sites[s.name] = Moments(
            1,
            torch.randn(s.width, generator=g, dtype=torch.float64),
            torch.rand(s.width, generator=g, dtype=torch.float64),
        )
    return Stats(vbp.models.model_name(model), sites)


@pytest.mark.parametrize("name", list(TABLE_10))
def test_pruned_deit_matches_paper_table_10(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    stats = random_stats(model)
    for rate, (gmacs, mparams) in TABLE_10[name].items():
        pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, rate), stats)
        macs, params = vbp.count(pruned)
        assert abs(macs / 1e9 - gmacs) <= 0.01, (rate, macs / 1e9, gmacs)
        assert abs(params / 1e6 - mparams) <= 0.01, (rate, params / 1e6, mparams)


def test_count_sees_attention_and_layer_norm():
    """DeiT-Tiny by hand: linear/conv MACs + the two attention matmuls + 5 per layer-norm element."""
    model = timm.create_model("deit_tiny_patch16_224").eval()
    t, d, h, blocks = 197, 192, 768, 12
    per_block = t * d * (3 * d + d + 2 * h) + 2 * t * t * d + 2 * 5 * t * d
    want = blocks * per_block + 196 * d * (3 * 16 * 16) + d * 1000 + 5 * t * d
    macs, params = vbp.count(model)
    assert macs == want
    assert params == sum(p.numel() for p in model.parameters())
