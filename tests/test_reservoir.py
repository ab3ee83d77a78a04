"""The activation reservoir keeps a uniform sample of rows, before and after the activation alike."""

import torch
from conftest import random_batches

import vbp
from vbp.reservoir import Reservoir


def test_reservoir_rows_are_offered_rows_and_uniform():
    n, k = 1000, 100
    rows = torch.arange(n, dtype=torch.float32)[:, None]
    means = []
    for seed in range(200):
        r = Reservoir(k, seed)
        for part in rows.split([1, 499, 200, 300]):
            r.add(part, part * 2)
        assert r.pre.shape == (k, 1) and torch.equal(r.post, r.pre * 2)
        assert r.pre.unique().numel() == k  # without replacement
        means.append(r.pre.mean().item())
    # mean of a uniform sample of 0..999: 499.5, standard error over 200 repeats ~ 2
    assert abs(sum(means) / len(means) - 499.5) < 10


def test_calibrate_keeps_samples_that_match_the_activation(deit_tiny_small):
    stats = vbp.calibrate(deit_tiny_small, random_batches(2, 3, (3, 32, 32)), samples=16, progress=False)
    sample = stats.samples["blocks.2.mlp"]
    assert sample["pre"].shape == (16, 768)
    torch.testing.assert_close(sample["post"], torch.nn.functional.gelu(sample["pre"]))
