"""VBP's mean-shift compensation: each pruned hidden value is held at its calibration mean, a constant that
folds into the consumer's bias in float64: b2 += W2[:, P] @ mu[P] (`ops.fold_bias`)."""

from dataclasses import dataclass

from ..ops import fold_bias
from .base import COMPENSATIONS, Compensation, SiteFold


@COMPENSATIONS.register("mean")
@dataclass(frozen=True)
class Mean(Compensation):
    needs = frozenset({"mean"})

    def fold(self, f: SiteFold):
        if not f.pruned.numel():
            return f.w2_kept, f.b2
        b2 = f.b2 if f.b2 is not None else f.w2.new_zeros(f.w2.shape[0])
        return f.w2_kept, fold_bias(f.w2, b2, f.stats.mean(f.site).to(f.w2.device), f.pruned)
