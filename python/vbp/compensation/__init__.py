"""Compensation strategies: what replaces the pruned neurons' hidden values, folded into the consumer.

A strategy is one file here that registers a `Compensation`: its name, the statistics it needs, and `fold`,
which turns one site's consumer weights into the kept columns and bias of the pruned consumer.

- "none": pruned values become 0 (plain slicing);
- "mean": VBP's mean-shift, each pruned value held at its mean: b2 += W2_P mu_P;
- "affine": each pruned value replaced by its least-squares prediction from the kept ones (`affine.py`).
"""

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import VbpError
from ..stats import Stats


@dataclass
class SiteFold:
    """One site's inputs to a fold. w2: consumer weight [out, C]; b2: its bias [out] or None; w2_kept: w2[:, keep]
    [out, K]; keep / pruned: neuron indices (int64, on w2's device); ridge: the user's ridge, or None."""

    site: str
    w2: torch.Tensor
    b2: torch.Tensor | None
    w2_kept: torch.Tensor
    keep: torch.Tensor
    pruned: torch.Tensor
    stats: Stats | None
    ridge: float | None = None


@dataclass(frozen=True)
class Compensation:
    """name; needs: "mean" and/or "covariance" (what `stats` must hold); fold(SiteFold) -> (w2_kept, b2)."""

    name: str
    needs: frozenset[str]
    fold: Callable[[SiteFold], tuple[torch.Tensor, torch.Tensor | None]]


COMPENSATIONS: dict[str, Compensation] = {}


def register(compensation: Compensation) -> Compensation:
    COMPENSATIONS[compensation.name] = compensation
    return compensation


def get_compensation(name: str) -> Compensation:
    if name not in COMPENSATIONS:
        raise VbpError(f"unknown compensation '{name}'; choose one of {', '.join(COMPENSATIONS)}")
    return COMPENSATIONS[name]


from . import none, mean, affine  # noqa: E402,F401  (registration order)
