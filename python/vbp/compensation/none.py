"""No compensation: a pruned neuron's hidden value becomes 0 (its consumer column is dropped)."""

from . import Compensation, SiteFold, register


def fold(f: SiteFold):
    return f.w2_kept, f.b2


register(Compensation("none", frozenset(), fold))
