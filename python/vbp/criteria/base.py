"""The criterion type and its registry (see the package's docstring)."""

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..families import find_sites
from ..registry import Registry
from ..stats import Stats
from ..strategy import Strategy

CRITERIA: Registry[str, type["Criterion"]] = Registry("criterion")


@dataclass(frozen=True)
class Criterion(Strategy):
    """A neuron score; its fields are its options. needs: subset of {"model", "covariance"}. output_units: the
    score is what removing the neuron costs in the consumer's output (squared), comparable across sites once
    divided by the residual stream's size (scope "residual")."""

    registry = CRITERIA
    output_units: ClassVar[bool] = False

    @abstractmethod
    def scores(self, stats: Stats, model: nn.Module | None, seed: int) -> dict[str, torch.Tensor]:
        """{site: float64 [C] on the CPU}; `seed` for criteria that draw random numbers."""


def consumer_column_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """||W2[:, j]||^2 of every site's consumer, float64 [C] on the CPU."""
    return {s.name: s.consumer_weights()[0].detach().double().square().sum(0).cpu() for s in find_sites(model)}
