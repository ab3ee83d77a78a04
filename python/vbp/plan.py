"""A pruning plan: which hidden neurons of every MLP site to keep. Serializable as JSON."""

import json
import os
from dataclasses import dataclass

import torch

from .errors import VbpError, malformed
from .files import read_json, write_text_atomic

FORMAT = "vbp-plan/1"


def _index(value) -> int:
    """A neuron index from JSON: an integer (3, not 3.5, "3" or true)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a neuron index must be an integer, got {value!r}")
    return value


def _ratio(value) -> float:
    """A plan's ratio from JSON: a number in [0, 1) (not NaN, 1e300 or "0.5")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"its ratio must be a number in [0, 1), got {value!r}")
    return float(value)


def _criterion(value) -> str | dict:
    """A criterion from JSON: its name (older plans) or its versioned dict."""
    if not isinstance(value, (str, dict)):
        raise ValueError(f"a criterion must be a name or a dict, got {value!r}")
    return value


def _target(value) -> dict | None:
    """A plan's latency target from JSON: a dict, or None (plans selected by ratio)."""
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"a target must be a dict, got {value!r}")
    return value


@dataclass
class Plan:
    """model: the id of the model it was made for (`vbp.create_model`); ratio, scope, criterion: how it was
    chosen (the criterion's versioned dict, or its name); widths: original width per site; keep: sorted indices of the kept neurons per site; target: for a
    plan selected to a latency target, the target and the table's prediction (see `vbp.latency.keep_for_target`)."""

    model: str
    ratio: float
    scope: str
    widths: dict[str, int]
    keep: dict[str, list[int]]
    criterion: str | dict = "variance"
    target: dict | None = None

    def kept(self, site: str) -> torch.Tensor:
        """Kept neuron indices of a site, int64 [K], ascending."""
        return torch.tensor(self.keep[site], dtype=torch.int64)

    def pruned(self, site: str) -> torch.Tensor:
        """Pruned neuron indices of a site, int64 [P], ascending."""
        mask = torch.ones(self.widths[site], dtype=torch.bool)
        mask[self.kept(site)] = False
        return mask.nonzero().flatten()

    @property
    def kept_widths(self) -> dict[str, int]:
        return {name: len(k) for name, k in self.keep.items()}

    @property
    def pruned_fraction(self) -> float:
        """Fraction of all hidden neurons this plan removes."""
        return 1 - sum(self.kept_widths.values()) / sum(self.widths.values())

    def save(self, path: str | os.PathLike) -> None:
        doc = {
            "format": FORMAT,
            "model": self.model,
            "ratio": self.ratio,
            "ratio_removed": self.pruned_fraction,  # what rounding (round_to, min_keep) made of the ratio asked
            "scope": self.scope,
            "criterion": self.criterion,
            "widths": self.widths,
            "keep": self.keep,
        }
        if self.target is not None:
            doc["target"] = self.target
        write_text_atomic(path, json.dumps(doc))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        doc = read_json(path, FORMAT, "plan file")
        try:
            plan = cls(
                str(doc["model"]),
                _ratio(doc["ratio"]),
                str(doc["scope"]),
                {str(k): int(v) for k, v in doc["widths"].items()},
                {str(k): [_index(i) for i in v] for k, v in doc["keep"].items()},
                _criterion(doc.get("criterion", "variance")),
                _target(doc.get("target")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VbpError(f"{path} is a malformed vbp plan ({malformed(exc)}); make it again with vbp prune --output") from exc
        plan.validate()
        return plan

    def validate(self) -> None:
        """Raise VbpError unless every site keeps at least one valid, unique, sorted index."""
        if set(self.keep) != set(self.widths):
            raise VbpError("plan is inconsistent: kept indices and widths name different sites")
        for name, keep in self.keep.items():
            width = self.widths[name]
            if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= width:
                raise VbpError(f"plan keeps an invalid set of neurons at site '{name}' (width {width})")
