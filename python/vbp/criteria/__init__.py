"""Neuron importance criteria: which neurons to keep (higher score = kept first).

A criterion is a `Criterion` config registered in `CRITERIA` (one file each here; others from anywhere):
what it needs ("model" for weights, "covariance" for statistics gathered with covariance=True) and `scores`,
per site a float64 [C] on the CPU.

"variance" is VBP's; "magnitude" and "random" are the baselines it is compared against; "weighted_variance"
scales the variance by the neuron's consumer column (FLAP's fluctuation metric); "redundancy" prunes first
the neurons the others predict best (needs covariance).
"""

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VbpError
from ..registry import Registry
from ..sites import find_sites
from ..stats import Stats
from ..strategy import Strategy

CRITERIA: Registry[str, type["Criterion"]] = Registry("criterion")


@dataclass(frozen=True)
class Criterion(Strategy):
    """A neuron score; its fields are its options. needs: subset of {"model", "covariance"}."""

    registry = CRITERIA

    @abstractmethod
    def scores(self, stats: Stats, model: nn.Module | None, seed: int) -> dict[str, torch.Tensor]:
        """{site: float64 [C] on the CPU}; `seed` for criteria that draw random numbers."""


def consumer_column_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """||W2[:, j]||^2 of every site's consumer, float64 [C] on the CPU."""
    return {s.name: s.consumer_weights()[0].detach().double().square().sum(0).cpu() for s in find_sites(model)}


def neuron_scores(
    criterion: "str | dict | Criterion", stats: Stats, model: nn.Module | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Score per neuron of every site, float64 [C] on CPU, by `criterion` (a config or a name in CRITERIA)."""
    config = Criterion.resolve(criterion)
    if "model" in config.needs and model is None:
        raise VbpError(f"the {config.name} criterion needs the model; pass model=")
    if "covariance" in config.needs:
        stats.check_covariances(stats.sites, needed_for=f"the {config.name} criterion")
    return config.scores(stats, model, seed)


# registration order: the order of --criterion's choices
# isort: off
from .variance import Variance  # noqa: E402,F401
from .weighted_variance import WeightedVariance  # noqa: E402,F401
from .redundancy import Redundancy  # noqa: E402,F401
from .magnitude import Magnitude  # noqa: E402,F401
from .random_order import Random  # noqa: E402,F401
# isort: on
