"""Neuron importance criteria: which neurons to keep (higher score = kept first).

A criterion is one file here that registers a `Criterion`: its name, what it needs ("model" for weights,
"covariance" for statistics gathered with covariance=True), and `scores`, per site a float64 [C] on the CPU.

"variance" is VBP's; "magnitude" and "random" are the baselines it is compared against; "weighted_variance"
scales the variance by the neuron's consumer column (FLAP's fluctuation metric); "redundancy" prunes first
the neurons the others predict best (needs covariance).
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import VbpError
from ..sites import find_sites
from ..stats import Stats


@dataclass(frozen=True)
class Criterion:
    """name; needs: subset of {"model", "covariance"}; scores(stats, model, seed) -> {site: float64 [C]}."""

    name: str
    needs: frozenset[str]
    scores: Callable[[Stats, nn.Module | None, int], dict[str, torch.Tensor]]


CRITERIA_BY_NAME: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    CRITERIA_BY_NAME[criterion.name] = criterion
    return criterion


def consumer_column_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """||W2[:, j]||^2 of every site's consumer, float64 [C] on the CPU."""
    return {s.name: s.consumer_weights()[0].detach().double().square().sum(0).cpu() for s in find_sites(model)}


def neuron_scores(
    criterion: str, stats: Stats, model: nn.Module | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Score per neuron of every site, float64 [C] on CPU, for `criterion` (a name in CRITERIA)."""
    if criterion not in CRITERIA_BY_NAME:
        raise VbpError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    c = CRITERIA_BY_NAME[criterion]
    if "model" in c.needs and model is None:
        raise VbpError(f"the {criterion} criterion needs the model; pass model=")
    if "covariance" in c.needs:
        stats.check_covariances(stats.sites, needed_for=f"the {criterion} criterion")
    return c.scores(stats, model, seed)


from . import variance, magnitude, random_order, weighted_variance, redundancy  # noqa: E402,F401

CRITERIA = tuple(CRITERIA_BY_NAME)
