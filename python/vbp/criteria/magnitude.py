"""Baseline: the group L2 norm of each neuron's weights, its rows and biases in every producer (fc1; gate
and up) and its consumer column."""

from dataclasses import dataclass

from ..families import find_sites
from .base import CRITERIA, Criterion


@CRITERIA.register("magnitude")
@dataclass(frozen=True)
class Magnitude(Criterion):
    needs = frozenset({"model"})

    def scores(self, stats, model, seed):
        out = {}
        for site in find_sites(model):
            w2, _ = site.consumer_weights()
            sq = w2.detach().double().square().sum(0)
            for w, b in site.producer_weights():
                sq = sq + w.detach().double().square().sum(1)
                if b is not None:
                    sq = sq + b.detach().double().square()
            out[site.name] = sq.sqrt().cpu()
        return out
