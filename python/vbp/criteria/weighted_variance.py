"""FLAP's fluctuation metric: var_j * ||W2[:, j]||^2, the variance a neuron puts into the consumer's output
when its value is held at its mean (so mean-shift compensation's error, neuron by neuron)."""

from . import Criterion, consumer_column_norms, register


def scores(stats, model, seed):
    norms = consumer_column_norms(model)
    return {name: stats.variance(name).detach().cpu() * norms[name] for name in stats.sites}


register(Criterion("weighted_variance", frozenset({"model"}), scores))
