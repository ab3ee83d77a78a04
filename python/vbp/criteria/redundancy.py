"""Redundancy-aware criterion (vbp's design): prune first the neurons the other kept neurons predict best.

With affine compensation, removing neuron j costs about its conditional variance given the kept neurons,
var(h_j | h_K) = 1 / (S_KK^-1)_jj, times ||W2[:, j]||^2 (what the consumer makes of it). A neuron that is
a near-copy or a near-combination of others costs nothing even when its variance is large, which the
variance criterion cannot see. The removal is greedy, in rounds: each round recomputes the precision matrix
of the neurons still kept (Cholesky, float64) and removes the cheapest eighth of them. A neuron's score is
its cost when removed, made non-decreasing in removal order, so that ranking by score (per layer or across
layers) follows the greedy order.
"""

from dataclasses import dataclass

import torch

from ..covariance import DEFAULT_RIDGE, check_ridge
from ..errors import VbpError
from .base import CRITERIA, Criterion, consumer_column_norms

ROUND_FRACTION = 1 / 8


def redundancy_scores(cov: torch.Tensor, column_norms: torch.Tensor, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """Scores [C] of one site from its covariance [C, C] and consumer column norms ||W2[:, j]||^2 [C]."""
    width = cov.shape[0]
    active = torch.arange(width)
    scores = torch.empty(width, dtype=torch.float64)
    level = 0.0
    eye = torch.eye(width, dtype=torch.float64)
    while active.numel():
        s = cov[active][:, active]
        system = s + ridge * float(s.diagonal().mean()) * eye[: active.numel(), : active.numel()]
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) != 0:
            raise VbpError("the redundancy criterion met a covariance that is not positive definite; calibrate on more data")
        precision_diag = torch.cholesky_inverse(factor).diagonal()
        cost = column_norms[active] / precision_diag
        n_remove = max(1, int(active.numel() * ROUND_FRACTION))
        order = torch.argsort(cost, stable=True)[:n_remove]
        for j in order.tolist():
            level = max(level, float(cost[j]))
            scores[active[j]] = level
        keep = torch.ones(active.numel(), dtype=torch.bool)
        keep[order] = False
        active = active[keep]
    return scores


@CRITERIA.register("redundancy")
@dataclass(frozen=True)
class Redundancy(Criterion):
    """ridge: of each round's solve, relative to the kept neurons' mean variance (as affine compensation's)."""

    ridge: float = DEFAULT_RIDGE
    needs = frozenset({"model", "covariance"})
    output_units = True

    def __post_init__(self):
        check_ridge(self.ridge)

    def scores(self, stats, model, seed):
        norms = consumer_column_norms(model)
        return {name: redundancy_scores(stats.covariance(name).cpu(), norms[name], self.ridge) for name in stats.sites}
