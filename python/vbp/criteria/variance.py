"""VBP's criterion: the variance of each neuron's hidden value over the calibration data."""

from . import Criterion, register


def scores(stats, model, seed):
    return {name: stats.variance(name).detach().cpu() for name in stats.sites}


register(Criterion("variance", frozenset(), scores))
