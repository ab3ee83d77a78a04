"""Solving the compensation for a whole DeiT-B at 50% (CPU): mean-shift against affine (a 1536 x 1536 Cholesky
solve per site, float64), and the redundancy criterion's greedy ranking. Random-init weights and a random
positive definite covariance per site stand in for calibrated ones: the cost depends on the shapes only.

    .venv/bin/python -m pytest benchmarks/bench_compensation.py --benchmark-only
"""

import copy

import pytest
import timm
import torch

import vbp
from vbp.covariance import CoMoments
from vbp.stats import Moments, Stats


@pytest.fixture(scope="module")
def deit_base():
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


@pytest.mark.parametrize("compensation", ["mean", "affine"])
def test_prune_deit_base(benchmark, deit_base, compensation):
    model, stats, plan = deit_base
    benchmark.pedantic(
        lambda: vbp.prune(copy.deepcopy(model), plan, stats, compensation=compensation), rounds=3, warmup_rounds=1
    )


def test_redundancy_ranking_deit_base(benchmark, deit_base):
    model, stats, _ = deit_base
    benchmark.pedantic(lambda: vbp.select(stats, 0.5, criterion="redundancy", model=model), rounds=1, iterations=1)
