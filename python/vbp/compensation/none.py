"""No compensation: a pruned neuron's hidden value becomes 0 (its consumer column is dropped)."""

from dataclasses import dataclass

from .base import COMPENSATIONS, Compensation, SiteFold


@COMPENSATIONS.register("none")
@dataclass(frozen=True)
class NoCompensation(Compensation):
    def fold(self, f: SiteFold):
        return f.w2_kept, f.b2
