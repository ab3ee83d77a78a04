"""Solving the compensation for a whole DeiT-B at 50% (CPU): mean-shift against affine (a 1536 x 1536 Cholesky
solve per site, float64), and the redundancy criterion's greedy ranking. Random-init weights and a random
positive definite covariance per site stand in for calibrated ones: the cost depends on the shapes only.

    .venv/bin/python -m pytest benchmarks/bench_compensation.py --benchmark-only
"""

import copy

import pytest

import vbp


@pytest.mark.parametrize("compensation", ["mean", "affine"])
def test_prune_deit_base(benchmark, deit_base, compensation):
    model, stats, plan = deit_base
    benchmark.pedantic(
        lambda: vbp.prune(copy.deepcopy(model), plan, stats, compensation=compensation), rounds=3, warmup_rounds=1
    )


def test_redundancy_ranking_deit_base(benchmark, deit_base):
    model, stats, _ = deit_base
    benchmark.pedantic(lambda: vbp.select(stats, 0.5, criterion="redundancy", model=model), rounds=1, iterations=1)
