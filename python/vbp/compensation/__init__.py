"""Compensation strategies: what replaces the pruned neurons' hidden values, folded into the consumer.

A strategy is a `Compensation` config registered in `COMPENSATIONS` (one file each here; others from
anywhere): the statistics it needs and `fold`, which turns one site's consumer weights into the kept columns
and bias of the pruned consumer.

- NoCompensation, "none": pruned values become 0 (plain slicing);
- Mean, "mean": VBP's mean-shift, each pruned value held at its mean: b2 += W2_P mu_P;
- Affine, "affine": each pruned value replaced by its least-squares prediction from the kept ones (`affine.py`).
"""

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


# registration order: the order of --compensation's choices
# isort: off
from .none import NoCompensation  # noqa: E402,F401
from .mean import Mean  # noqa: E402,F401
from .affine import Affine  # noqa: E402,F401
# isort: on
