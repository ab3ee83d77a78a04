"""Baseline: uniform random scores, the floor every criterion must beat (seeded by `select`'s seed)."""

from dataclasses import dataclass

import torch

from .base import CRITERIA, Criterion


@CRITERIA.register("random")
@dataclass(frozen=True)
class Random(Criterion):
    def scores(self, stats, model, seed):
        g = torch.Generator().manual_seed(seed)
        return {name: torch.rand(width, generator=g, dtype=torch.float64) for name, width in stats.widths.items()}
