"""Neuron importance scores: which neurons a criterion keeps (higher score = kept first).

"variance" is VBP's criterion; "magnitude" and "random" are the baselines it is compared against.
"""

import torch
from torch import nn

from .errors import VbpError
from .sites import find_sites
from .stats import Stats

CRITERIA = ("variance", "magnitude", "random")


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """Group L2 norm of each hidden neuron's weights: its rows and biases in every producer (fc1; gate and
    up) and its consumer column, float64 [C]."""
    scores = {}
    for site in find_sites(model):
        w2, _ = site.consumer_weights()
        sq = w2.detach().double().square().sum(0)
        for w, b in site.producer_weights():
            sq = sq + w.detach().double().square().sum(1)
            if b is not None:
                sq = sq + b.detach().double().square()
        scores[site.name] = sq.sqrt().cpu()
    return scores


def neuron_scores(
    criterion: str, stats: Stats, model: nn.Module | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Score per neuron of every site, float64 [C] on CPU, for `criterion` in CRITERIA."""
    if criterion == "variance":
        return {name: stats.variance(name).detach().cpu() for name in stats.sites}
    if criterion == "magnitude":
        if model is None:
            raise VbpError("the magnitude criterion needs the model; pass model=")
        return magnitude_scores(model)
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return {name: torch.rand(width, generator=g, dtype=torch.float64) for name, width in stats.widths.items()}
    raise VbpError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
