"""Per-site covariance of the hidden value: count, mean [C] and co-moment [C, C] (sum of outer products of
deviations from the mean), all float64 once merged.

A batch is shifted by a reference close to the mean (the running mean) and centred at its own mean in the
activations' precision, then reduced by one GEMM (fp32 accumulation for 16-bit and fp32 values, float64 for
float64); batches and ranks merge by the co-moment form of Chan's formula in float64. Never
sum(x x^T)/n - mu mu^T on raw values: it cancels for exactly the large-mean, small-spread neurons.
Memory: C^2 x 8 bytes per site (DeiT-B: 12 sites x 3072^2 x 8 B = 906 MB; DeiT-S 12 x 1536^2: 226 MB).
"""

import math
from dataclasses import dataclass

import torch

from .chan import chan_merge, row_chunks
from .errors import VbpError

# The ridge of solves with a site's covariance (affine compensation, the redundancy criterion), relative to the
# neurons' mean variance; 1e-2 was chosen by measurement (docs/compensation.md).
DEFAULT_RIDGE = 1e-2


def check_ridge(ridge: float) -> None:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < math.inf:
        raise VbpError(f"ridge must be a finite number at least 0 (e.g. 0.01), got {ridge!r}")


@dataclass(frozen=True)
class CoMoments:
    """count (samples seen), mean [C] and comoment [C, C] (sum of (x - mean)(x - mean)^T), float64."""

    count: int
    mean: torch.Tensor
    comoment: torch.Tensor

    @classmethod
    def zeros(cls, width: int, device: torch.device | str = "cpu") -> "CoMoments":
        return cls(0, torch.zeros(width, dtype=torch.float64, device=device),
                   torch.zeros(width, width, dtype=torch.float64, device=device))

    @classmethod
    def of(cls, x: torch.Tensor, shift: torch.Tensor | None = None) -> "CoMoments":
        """Co-moments of x [N, C] over its rows; `shift` [C]: a reference near the mean (default: the first row)."""
        chunks = row_chunks(x)
        shift = (x[0] if shift is None else shift).to(x.dtype)
        acc = cls.zeros(x.shape[1], x.device)
        for chunk in chunks:
            acc = acc.merge(cls._batch(chunk, shift))
        return acc

    @staticmethod
    def _batch(x: torch.Tensor, shift: torch.Tensor) -> "CoMoments":
        n = x.shape[0]
        gemm_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        shifted = (x - shift).to(gemm_dtype)
        centre = shifted.mean(0, dtype=torch.float64)
        centred = shifted - centre.to(gemm_dtype)
        gram = (centred.T @ centred).double()
        # centred rows sum to s, not exactly 0 (rounding of the centre): the co-moment about their own mean is
        # gram - s s^T / n, a correction on already-centred values
        s = centred.sum(0, dtype=torch.float64)
        return CoMoments(n, shift.double() + centre + s / n, gram - torch.outer(s, s) / n)

    def merge(self, other: "CoMoments") -> "CoMoments":
        """Chan et al.'s co-moment combination of two disjoint sets of samples."""
        if other.mean.shape != self.mean.shape:
            raise VbpError(f"cannot merge a covariance of {other.mean.numel()} neurons into {self.mean.numel()}")
        outer = lambda d: torch.outer(d, d)  # noqa: E731
        return CoMoments(*chan_merge(self.count, self.mean, self.comoment, other.count, other.mean, other.comoment, outer))

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance [C, C] float64."""
        if self.count == 0:
            raise VbpError("no samples were gathered for this covariance")
        return self.comoment / self.count

    def to(self, device: torch.device | str) -> "CoMoments":
        return CoMoments(self.count, self.mean.to(device), self.comoment.to(device))
