"""Affine compensation: each pruned hidden value is replaced by its least-squares prediction from the kept
ones, h_P ~ A h_K + c, which folds into the consumer at no inference cost:

    A = S_PK (S_KK + lam I)^-1      [P, K], from the site's covariance S (float64)
    c = mu_P - A mu_K
    W2_K += W2_P A,  b2 += W2_P c

Exact when the pruned values are affine in the kept ones; on the calibration data never worse than the mean
(A = 0 is one candidate). lam is scale-free: `ridge` times the kept neurons' mean variance. The default,
`covariance.DEFAULT_RIDGE` = 1e-2, was chosen by measurement (docs/compensation.md: all-MiniLM-L6-v2, ridge
1e-4..1e-1 within 0.001 cosine at 30-50%, 1e-2 best there). Solved by a Cholesky factorisation.
"""

from dataclasses import dataclass

import torch

from ..covariance import DEFAULT_RIDGE, check_ridge
from ..errors import VbpError
from .base import COMPENSATIONS, Compensation, SiteFold


def affine_predictor(
    cov: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor, pruned: torch.Tensor, ridge: float, site: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [P, K], c [P]) of the ridge least-squares prediction of h_P from h_K, in float64."""
    s_kk = cov[keep][:, keep]
    s_pk = cov[pruned][:, keep]
    lam = ridge * float(s_kk.diagonal().mean())
    system = s_kk + lam * torch.eye(len(keep), dtype=cov.dtype, device=cov.device)
    factor, info = torch.linalg.cholesky_ex(system)
    pivots = factor.diagonal().square()
    # a pivot at rounding level is a singular system that rounding happened to keep positive
    singular = int(info) != 0 or float(pivots.min()) <= float(pivots.max()) * len(keep) * torch.finfo(cov.dtype).eps
    if singular or not torch.isfinite(factor).all():
        raise VbpError(
            f"affine compensation at site '{site}': the kept neurons' covariance (plus ridge {ridge}) is not "
            "positive definite (kept neurons that are constant or exact copies of others); raise the ridge "
            "(Affine(ridge=...), --ridge) or calibrate on more data"
        )
    a = torch.cholesky_solve(s_pk.T, factor).T
    c = mean[pruned] - a @ mean[keep]
    if not (torch.isfinite(a).all() and torch.isfinite(c).all()):
        raise VbpError(f"affine compensation at site '{site}' gave non-finite coefficients; raise the ridge (--ridge)")
    return a, c


@COMPENSATIONS.register("affine")
@dataclass(frozen=True)
class Affine(Compensation):
    """ridge: lam relative to the kept neurons' mean variance (0: plain least squares)."""

    ridge: float = DEFAULT_RIDGE
    needs = frozenset({"covariance"})

    def __post_init__(self):
        check_ridge(self.ridge)

    def fold(self, f: SiteFold):
        if not f.pruned.numel():
            return f.w2_kept, f.b2
        cov = f.stats.covariance(f.site, needed_for="affine compensation").to(f.w2.device)
        mean = f.stats.covariances[f.site].mean.to(f.w2.device)
        a, c = affine_predictor(cov, mean, f.keep, f.pruned, self.ridge, f.site)
        w2_pruned = f.w2[:, f.pruned].double()
        w2_kept = (f.w2_kept.double() + w2_pruned @ a).to(f.w2.dtype)
        b2 = f.b2.double() if f.b2 is not None else torch.zeros(f.w2.shape[0], dtype=torch.float64, device=c.device)
        return w2_kept, (b2 + w2_pruned @ c).to(f.w2.dtype)
