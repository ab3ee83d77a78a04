"""Compensation strategies: what replaces the pruned neurons' hidden values, folded into the consumer.

A strategy is a `Compensation` config registered in `COMPENSATIONS` (one file each here; others from
anywhere): the statistics it needs and `fold`, which turns one site's consumer weights into the kept columns
and bias of the pruned consumer.

- NoCompensation, "none": pruned values become 0 (plain slicing);
- Mean, "mean": VBP's mean-shift, each pruned value held at its mean: b2 += W2_P mu_P;
- Affine, "affine": each pruned value replaced by its least-squares prediction from the kept ones (`affine.py`).
"""

from .base import COMPENSATIONS, Compensation, SiteFold  # noqa: F401  (the package's API)

# registration order: the order of --compensation's choices
# isort: off
from .none import NoCompensation  # noqa: E402,F401
from .mean import Mean  # noqa: E402,F401
from .affine import Affine  # noqa: E402,F401
# isort: on
