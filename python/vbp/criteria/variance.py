"""VBP's criterion: the variance of each neuron's hidden value over the calibration data."""

from dataclasses import dataclass

from .base import CRITERIA, Criterion


@CRITERIA.register("variance")
@dataclass(frozen=True)
class Variance(Criterion):
    def scores(self, stats, model, seed):
        return {name: stats.variance(name).detach().cpu() for name in stats.sites}
