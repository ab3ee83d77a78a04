"""FLAP's fluctuation metric: var_j * ||W2[:, j]||^2, the variance a neuron puts into the consumer's output
when its value is held at its mean (so mean-shift compensation's error, neuron by neuron)."""

from dataclasses import dataclass

from .base import CRITERIA, Criterion, consumer_column_norms


@CRITERIA.register("weighted_variance")
@dataclass(frozen=True)
class WeightedVariance(Criterion):
    needs = frozenset({"model"})
    output_units = True

    def scores(self, stats, model, seed):
        norms = consumer_column_norms(model)
        return {name: stats.variance(name).detach().cpu() * norms[name] for name in stats.sites}
