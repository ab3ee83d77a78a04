"""Per-neuron activation statistics: count, mean and M2 (sum of squared deviations), all in float64.

Batches are reduced with a float64 two-pass in chunks and merged with Chan's formula, so the result is
as exact as a float64 two-pass over all the data, whatever the order, split or size of the batches.
E[x^2] - E[x]^2 is never formed: it cancels catastrophically for exactly the low-variance neurons VBP prunes.
"""

import os
import warnings
from dataclasses import dataclass, field, replace

import torch

from .chan import chan_merge, row_chunks
from .covariance import CoMoments
from .errors import VbpError, malformed
from .files import read_safetensors, write_safetensors
from .model_ids import canonical_id

FORMAT = "vbp-stats/2"  # version 2 may hold covariances; version 1 files (moments only) still load
FORMAT_V1 = "vbp-stats/1"


@dataclass(frozen=True)
class Moments:
    """count (samples seen), mean [C] and m2 [C] (sum of squared deviations from the mean), float64."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def zeros(cls, width: int, device: torch.device | str = "cpu") -> "Moments":
        z = torch.zeros(width, dtype=torch.float64, device=device)
        return cls(0, z, z.clone())

    @classmethod
    def of(cls, x: torch.Tensor) -> "Moments":
        """Moments of x [N, C] over its N rows (every row one sample)."""
        chunks = row_chunks(x)
        acc = cls.zeros(x.shape[1], x.device)
        for chunk in chunks:
            var, mean = torch.var_mean(chunk.double(), dim=0, correction=0)
            acc = acc.merge(cls(chunk.shape[0], mean, var * chunk.shape[0]))
        return acc

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al.'s parallel combination of two disjoint sets of samples."""
        if other.mean.shape != self.mean.shape:
            raise VbpError(f"cannot merge statistics of {other.mean.numel()} neurons into {self.mean.numel()}")
        return Moments(*chan_merge(self.count, self.mean, self.m2, other.count, other.mean, other.m2, torch.square))

    @property
    def variance(self) -> torch.Tensor:
        """Population variance per neuron, [C] float64."""
        if self.count == 0:
            raise VbpError("no samples were gathered for these statistics")
        return self.m2 / self.count

    def is_finite(self) -> torch.Tensor:
        """0-dim bool tensor on the statistics' device (no host sync)."""
        return torch.isfinite(self.mean).all() & torch.isfinite(self.m2).all()


@dataclass
class Stats:
    """Statistics of every MLP site of one model: site name -> Moments, plus the model's name.

    samples: optional site name -> {"pre": [k, C], "post": [k, C]}, a uniform sample of activation values
    before and after the non-linearity (see `calibrate(samples=k)`).
    batches, inputs: how many calibration batches and inputs went in; skipped: batches left out per site
    because of NaN/Inf (calibrate(nonfinite="skip")).
    covariances: site name -> CoMoments, for the sites calibrated with `covariance=` (affine compensation
    and the redundancy criterion need them). run: the options of the calibration (model, data, batch size,
    ...), as `calibrate(run=...)` was given them. weights: the fingerprint of the weights they were gathered
    on (`vbp.fingerprint`; "" in files written before it was recorded). streams: site name -> Moments [1] of
    log ||x||^2 of the residual stream the site writes into (`vbp.streams`), where the model has one.
    """

    model: str
    sites: dict[str, Moments]
    samples: dict[str, dict[str, torch.Tensor]] | None = None
    batches: int = 0
    inputs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    covariances: dict[str, CoMoments] = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # the options a calibration ran with (checked when resuming)
    weights: str = ""
    streams: dict[str, Moments] = field(default_factory=dict)

    @property
    def widths(self) -> dict[str, int]:
        return {name: m.mean.numel() for name, m in self.sites.items()}

    def mean(self, site: str) -> torch.Tensor:
        return self.sites[site].mean

    def variance(self, site: str) -> torch.Tensor:
        return self.sites[site].variance

    def check_covariances(self, sites, needed_for: str = "this") -> None:
        """A clear error unless the covariance of every one of `sites` (names) was gathered."""
        missing = [site for site in sites if site not in self.covariances]
        if missing:
            raise VbpError(
                f"{needed_for} needs the covariance of site '{missing[0]}', which these statistics lack; calibrate "
                "again with covariance (vbp.calibrate(..., covariance=True), vbp calibrate --covariance)"
            )

    def covariance(self, site: str, needed_for: str = "this") -> torch.Tensor:
        """[C, C] float64 covariance of a site's hidden value; a clear error when it was not gathered."""
        self.check_covariances([site], needed_for)
        return self.covariances[site].covariance

    def merge(self, other: "Stats") -> "Stats":
        """Statistics of the union of both sets of samples (e.g. two shards of a data set)."""
        self.check_matches(other.model, other.widths, what="the other statistics")
        if self.weights != other.weights:
            raise VbpError("cannot merge statistics gathered on different weights")
        skipped = {n: self.skipped.get(n, 0) + other.skipped.get(n, 0) for n in self.sites}
        if set(self.covariances) != set(other.covariances):
            raise VbpError("cannot merge statistics with covariances of different sites")
        return replace(
            self,
            sites={n: m.merge(other.sites[n]) for n, m in self.sites.items()},
            batches=self.batches + other.batches,
            inputs=self.inputs + other.inputs,
            skipped=skipped,
            covariances={n: c.merge(other.covariances[n]) for n, c in self.covariances.items()},
            streams={n: m.merge(other.streams[n]) for n, m in self.streams.items() if n in other.streams},
        )

    def check_matches(self, model: str, widths: dict[str, int], what: str = "the model") -> None:
        """Raise VbpError unless these statistics were gathered on a model with these sites and widths."""
        if model and self.model and canonical_id(model) != canonical_id(self.model):
            raise VbpError(f"statistics were gathered on '{self.model}' but {what} is '{model}'; calibrate again")
        if widths != self.widths:
            diff = sorted(set(widths.items()) ^ set(self.widths.items()))[:4]
            raise VbpError(
                f"statistics do not fit {what}: their MLP sites or widths differ (first differences: {diff}); "
                "calibrate this model again"
            )

    def check_weights(self, fingerprint: str, source: str = "the statistics") -> None:
        """Raise VbpError unless these statistics were gathered on weights with this fingerprint (statistics
        that recorded none pass with a warning)."""
        if not self.weights:
            warnings.warn(f"{source} do not record the weights they were gathered on; they cannot be checked")
        elif self.weights != fingerprint:
            raise VbpError(
                f"{source} were gathered on other weights than the model's (another checkpoint or random "
                "initialisation): calibrate this model again, or give --stats-anyway to prune with them regardless"
            )

    def to(self, device: torch.device | str) -> "Stats":
        return replace(
            self,
            sites={n: Moments(m.count, m.mean.to(device), m.m2.to(device)) for n, m in self.sites.items()},
            covariances={n: c.to(device) for n, c in self.covariances.items()},
            streams={n: Moments(m.count, m.mean.to(device), m.m2.to(device)) for n, m in self.streams.items()},
        )

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors by name, JSON metadata): the one serialisation of files and of torch.distributed."""
        tensors = {}
        for name, m in self.sites.items():
            tensors[f"{name}/mean"] = m.mean
            tensors[f"{name}/m2"] = m.m2
        for name, c in self.covariances.items():
            tensors[f"{name}/cov_mean"] = c.mean
            tensors[f"{name}/comoment"] = c.comoment
        for name, m in self.streams.items():
            tensors[f"{name}/stream_mean"] = m.mean
            tensors[f"{name}/stream_m2"] = m.m2
        for name, sample in (self.samples or {}).items():
            tensors[f"{name}/sample_pre"] = sample["pre"]
            tensors[f"{name}/sample_post"] = sample["post"]
        meta = {
            "format": FORMAT,
            "model": self.model,
            "sites": list(self.sites),
            "widths": self.widths,
            "counts": {n: m.count for n, m in self.sites.items()},
            "covariance_counts": {n: c.count for n, c in self.covariances.items()},
            "stream_counts": {n: m.count for n, m in self.streams.items()},
            "batches": self.batches,
            "inputs": self.inputs,
            "skipped": self.skipped,
            "run": self.run,
            "weights": self.weights,
        }
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, source: str = "the statistics") -> "Stats":
        """The inverse of `to_tensors` (also reads version 1 metadata); clear errors for incomplete or malformed data."""
        try:
            sites = {}
            for name in meta["sites"]:
                count = _count(meta["counts"][name])
                mean, m2 = tensors[f"{name}/mean"], tensors[f"{name}/m2"]
                if mean.shape != m2.shape or mean.dim() != 1:
                    raise ValueError(f"site {name}: mean {tuple(mean.shape)} and m2 {tuple(m2.shape)} differ")
                sites[name] = Moments(count, mean, m2)
            covariances = {
                name: CoMoments(_count(n), tensors[f"{name}/cov_mean"], tensors[f"{name}/comoment"])
                for name, n in meta.get("covariance_counts", {}).items()
            }
            streams = {
                name: Moments(_count(n), tensors[f"{name}/stream_mean"], tensors[f"{name}/stream_m2"])
                for name, n in meta.get("stream_counts", {}).items()
            }
            samples = {
                name: {"pre": tensors[f"{name}/sample_pre"], "post": tensors[f"{name}/sample_post"]}
                for name in meta["sites"]
                if f"{name}/sample_pre" in tensors
            }
            return cls(
                str(meta["model"]),
                sites,
                samples or None,
                _count(meta.get("batches", 0)),
                _count(meta.get("inputs", meta.get("images", 0))),  # files written before the rename say "images"
                {str(k): _count(v) for k, v in meta.get("skipped", {}).items()},
                covariances,
                dict(meta.get("run", {})),
                str(meta.get("weights", "")),
                streams,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VbpError(f"{source} are incomplete or malformed ({malformed(exc)}); calibrate again") from exc

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (mean and m2, and covariance where gathered, per site) whose metadata holds
        model, sites, widths and counts."""
        write_safetensors(path, *self.to_tensors())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Stats":
        tensors, meta = read_safetensors(path, (FORMAT, FORMAT_V1), "statistics")
        stats = cls.from_tensors(tensors, meta, source=f"the statistics in {path}")
        for name, m in stats.sites.items():  # what no calibration gives: a damaged or hand-made file
            if not bool(m.is_finite()) or bool((m.m2 < 0).any()):
                raise VbpError(
                    f"the statistics in {path} hold NaN, infinite or negative values (a mean or a sum of squares) at "
                    f"site '{name}', which no calibration gives: the file is damaged; calibrate again"
                )
        return stats


def _count(value) -> int:
    """A non-negative integer count from metadata (JSON may give 3, 3.0 or "3"; never -1, 2.5, Infinity or 10**400)."""
    try:
        if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
            raise ValueError
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"a count must be a non-negative integer, got {str(value)[:40]}") from exc
    return int(float(value))
