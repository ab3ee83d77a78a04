"""Pruning a whole DeiT-B (CPU): fold_bias and slice_mlp through the extension vs eager PyTorch (index_select
and a float64 matmul per site), and vbp.prune end to end.

    .venv/bin/python -m pytest benchmarks/bench_prune.py --benchmark-only
"""

import copy

import pytest
import torch

import vbp
from vbp import ops
from vbp.timing import interleaved_medians


def site_tensors(model, stats, plan):
    """Per site: (w1, b1, w2, b2, mean, kept, pruned), index tensors made once, outside the timing."""
    tensors = []
    for s in vbp.find_sites(model):
        [(w1, b1)], (w2, b2) = s.producer_weights(), s.consumer_weights()
        tensors.append((w1, b1, w2, b2, stats.mean(s.name), plan.kept(s.name), plan.pruned(s.name)))
    return tensors


def test_slice_and_fold_deit_base(benchmark, deit_base):
    if not ops.has_extension():
        pytest.skip("vbp._C not built")
    sites = site_tensors(*deit_base)

    def runner(fold, slice_):
        def run():
            for w1, b1, w2, b2, mean, kept, pruned in sites:
                fold(w2, b2, mean, pruned)
                slice_(w1, b1, w2, kept)

        return run

    extension = runner(torch.ops.vbp.fold_bias, torch.ops.vbp.slice_mlp)
    seconds = interleaved_medians(
        {"extension": extension, "eager": runner(ops.fold_bias_reference, ops.slice_mlp_reference)}, rounds=30
    )
    ms = {name: 1e3 * t for name, t in seconds.items()}
    benchmark.extra_info.update({"ms": ms, "vs_eager": ms["eager"] / ms["extension"]})
    print(f"\nslice + fold of DeiT-B: {ms}, extension {ms['eager'] / ms['extension']:.2f}x eager")
    benchmark(extension)


def test_prune_deit_base_end_to_end(benchmark, deit_base):
    model, stats, plan = deit_base
    benchmark.pedantic(lambda m: vbp.prune(m, plan, stats), setup=lambda: ((copy.deepcopy(model),), {}), rounds=5)
