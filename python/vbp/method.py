"""A pruning method: a criterion and a compensation ("variance+mean" is VBP), and what statistics it needs."""

from dataclasses import dataclass

from .compensation import COMPENSATIONS, Compensation
from .criteria import CRITERIA, Criterion
from .errors import VbpError
from .strategy import Strategy


def needs_covariance(criterion: "str | Strategy" = "variance", compensation: "str | Strategy" = "none") -> bool:
    """Whether a criterion or a compensation (configs or names) needs covariances calibrated."""
    return "covariance" in Criterion.resolve(criterion).needs | Compensation.resolve(compensation).needs


@dataclass(frozen=True)
class Method:
    """A criterion (name) and a compensation (a config; a name stands for its default options)."""

    criterion: str
    compensation: Compensation | str = "none"

    def __post_init__(self):
        object.__setattr__(self, "compensation", Compensation.resolve(self.compensation))

    @classmethod
    def parse(cls, text: str) -> "Method":
        criterion, _, compensation = text.partition("+")
        compensation = {"": "none", "comp": "mean"}.get(compensation, compensation)
        if criterion not in CRITERIA or compensation not in COMPENSATIONS:
            raise VbpError(
                f"unknown method '{text}': write CRITERION[+COMPENSATION] with a criterion from {', '.join(CRITERIA)} "
                f"and a compensation from {', '.join(COMPENSATIONS)}"
            )
        return cls(criterion, compensation)

    @property
    def needs_covariance(self) -> bool:
        return needs_covariance(self.criterion, self.compensation)

    def __str__(self) -> str:
        name = self.compensation.name
        return self.criterion + ("" if name == "none" else f"+{name}")
