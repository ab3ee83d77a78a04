"""Benchmarks run with `make bench` (pytest-benchmark); they are not part of `make test`. Shared fixtures."""

import pytest
import timm
import torch

import vbp
from vbp.covariance import CoMoments
from vbp.stats import Moments, Stats


@pytest.fixture(scope="module")
def deit_base():
    """(DeiT-B with random weights, synthetic statistics of its 12 sites with covariances, a 50% plan)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_base_patch16_224").eval()
    g = torch.Generator().manual_seed(0)
    sites, covariances = {}, {}
    for s in vbp.find_sites(model):
        factor = torch.randn(s.width, s.width, generator=g, dtype=torch.float64) / s.width**0.5
        cov = factor @ factor.T + 0.1 * torch.eye(s.width, dtype=torch.float64)
        mean = torch.randn(s.width, generator=g, dtype=torch.float64)
        sites[s.name] = Moments(1000, mean, 1000 * cov.diagonal().clone())
        covariances[s.name] = CoMoments(1000, mean, 1000 * cov)
    stats = Stats("deit_base_patch16_224", sites, covariances=covariances)
    return model, stats, vbp.select(stats, 0.5)
