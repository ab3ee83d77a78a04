"""The compensation type, its registry and a fold's inputs (see the package's docstring)."""

from abc import abstractmethod
from dataclasses import dataclass

import torch

from ..registry import Registry
from ..stats import Stats
from ..strategy import Strategy

COMPENSATIONS: Registry[str, type["Compensation"]] = Registry("compensation")


@dataclass
class SiteFold:
    """One site's inputs to a fold. w2: consumer weight [out, C]; b2: its bias [out] or None; w2_kept: w2[:, keep]
    [out, K]; keep / pruned: neuron indices (int64, on w2's device)."""

    site: str
    w2: torch.Tensor
    b2: torch.Tensor | None
    w2_kept: torch.Tensor
    keep: torch.Tensor
    pruned: torch.Tensor
    stats: Stats | None


@dataclass(frozen=True)
class Compensation(Strategy):
    """A compensation; its fields are its options. needs: "mean" and/or "covariance" (what `stats` must hold)."""

    registry = COMPENSATIONS

    @abstractmethod
    def fold(self, f: SiteFold) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the pruned consumer's weight [out, K], its bias [out] or None)."""
