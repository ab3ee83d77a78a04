"""Neuron importance criteria: which neurons to keep (higher score = kept first).

A criterion is a `Criterion` config registered in `CRITERIA` (one file each here; others from anywhere):
what it needs ("model" for weights, "covariance" for statistics gathered with covariance=True) and `scores`,
per site a float64 [C] on the CPU.

"variance" is VBP's; "magnitude" and "random" are the baselines it is compared against; "weighted_variance"
scales the variance by the neuron's consumer column (FLAP's fluctuation metric); "redundancy" prunes first
the neurons the others predict best (needs covariance).
"""

import torch
from torch import nn

from ..errors import VbpError
from ..stats import Stats
from .base import CRITERIA, Criterion, consumer_column_norms  # noqa: F401  (the package's API)


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
