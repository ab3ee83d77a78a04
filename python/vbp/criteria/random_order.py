"""Baseline: uniform random scores (seeded), the floor every criterion must beat."""

import torch

from . import Criterion, register


def scores(stats, model, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(width, generator=g, dtype=torch.float64) for name, width in stats.widths.items()}


register(Criterion("random", frozenset(), scores))
