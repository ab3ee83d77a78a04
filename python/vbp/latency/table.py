"""A latency table: the measured cost of every distinct MLP shape of a model at candidate widths, plus the fixed
cost of the rest of the model, for one runtime, dtype, device and batch. It predicts the end-to-end latency of
any plan as fixed + the sum of its sites' entries."""

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import VbpError, malformed
from ..files import read_json, write_text_atomic

FORMAT = "vbp-latency/1"


@dataclass(frozen=True)
class MlpShape:
    """One distinct MLP as the model runs it: in -> hidden -> out features, the producers' input shape at the
    table's batch (`input_shape`, e.g. [16, 197, 384], or NCHW for 1x1 convolutions), gated or not, the layer
    kind ("Linear" / "Conv2d"), the activation's class name, whether the layers have biases, and whether
    `vbp.compact` runs it (`compact`)."""

    in_features: int
    hidden: int
    out_features: int
    input_shape: tuple[int, ...]
    gated: bool
    layer: str
    activation: str
    bias: bool
    compact: bool

    @property
    def tokens(self) -> int:
        """Rows the MLP multiplies per batch (tokens, or spatial positions of a 1x1 convolution)."""
        n = 1
        for d in self.input_shape:
            n *= d
        return n // self.in_features

    def to_dict(self) -> dict:
        return {**self.__dict__, "input_shape": list(self.input_shape), "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "MlpShape":
        fields = {k: v for k, v in d.items() if k != "tokens"}
        return cls(**{**fields, "input_shape": tuple(fields["input_shape"])})


@dataclass
class WidthCurve:
    """Milliseconds `ms` (raw) one MLP shape adds at ascending `widths` (the last is the full width; a measured
    table starts at width 0, the MLP removed, which adds nothing: see `vbp.latency.profile`)."""

    widths: list[int]
    ms: list[float]

    @property
    def envelope(self) -> list[float]:
        """The monotone cost: each width costs what the cheapest width at or above it costs (a narrower layer can
        always be padded with zero neurons to a wider, faster one, which computes the same)."""
        return np.minimum.accumulate(np.asarray(self.ms)[::-1])[::-1].tolist()

    def at(self, width: int) -> float:
        """Milliseconds at `width`, interpolated linearly on the envelope between measured widths (the cost of
        the narrowest measured width below it)."""
        return float(np.interp(width, self.widths, self.envelope))

    def candidates(self) -> list[tuple[int, float]]:
        """(width, ms) of the measured widths on the envelope: those no wider width beats, the only ones a
        selection should choose."""
        return [(w, raw) for w, raw, env in zip(self.widths, self.ms, self.envelope) if raw <= env]


@dataclass
class LatencyTable:
    """key: what must match for the table to be reused (model, site shapes, runtime, dtype, device, batch,
    threads, torch); environment: recorded beside it (CPU flags, GPU, rounds, profiling seconds).
    shapes / curves: one per distinct MLP shape; sites: site name -> index into shapes.
    full_ms: the unpruned model measured end to end; fixed_ms: the model with every MLP at width 0, measured in
    the same pass (see `vbp.latency.profile`)."""

    key: dict
    shapes: list[MlpShape]
    curves: list[WidthCurve]
    sites: dict[str, int]
    full_ms: float
    fixed_ms: float
    environment: dict = field(default_factory=dict)

    @property
    def widths(self) -> dict[str, int]:
        """Full hidden width of every site."""
        return {name: self.shapes[i].hidden for name, i in self.sites.items()}

    def site_ms(self, site: str, width: int) -> float:
        return self.curves[self.sites[site]].at(width)

    def predict_ms(self, widths: dict[str, int]) -> float:
        """Predicted end-to-end milliseconds of a model with these kept widths (every site named)."""
        if set(widths) != set(self.sites):
            raise VbpError("the widths name other MLP sites than the latency table; profile this model")
        return self.fixed_ms + sum(self.site_ms(name, w) for name, w in widths.items())

    def predict_speedup(self, widths: dict[str, int]) -> float:
        """Predicted full latency / predicted latency at `widths` (both from the table: 1 at full widths)."""
        return self.predict_ms(self.widths) / self.predict_ms(widths)

    def mismatch(self, key: dict) -> list[str]:
        """The key fields in which this table differs from `key`, as 'name: table X, here Y' (empty: it matches)."""
        differs = [n for n in sorted(set(self.key) | set(key)) if self.key.get(n) != key.get(n)]
        return [
            f"{n} differ" if isinstance(key.get(n), (list, dict)) else f"{n}: table {self.key.get(n)!r}, here {key.get(n)!r}"
            for n in differs
        ]

    def save(self, path: str | os.PathLike) -> None:
        doc = {
            "format": FORMAT,
            "key": self.key,
            "environment": self.environment,
            "full_ms": self.full_ms,
            "fixed_ms": self.fixed_ms,
            "sites": self.sites,
            "shapes": [{**s.to_dict(), "widths": c.widths, "ms": c.ms} for s, c in zip(self.shapes, self.curves)],
        }
        write_text_atomic(path, json.dumps(doc, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        doc = read_json(path, FORMAT, "latency table", f"measure one with `vbp profile --output {path}`")
        try:
            shapes = [MlpShape.from_dict({k: v for k, v in s.items() if k not in ("widths", "ms")}) for s in doc["shapes"]]
            curves = [WidthCurve([int(w) for w in s["widths"]], [float(m) for m in s["ms"]]) for s in doc["shapes"]]
            table = cls(
                dict(doc["key"]),
                shapes,
                curves,
                {str(k): int(v) for k, v in doc["sites"].items()},
                float(doc["full_ms"]),
                float(doc["fixed_ms"]),
                dict(doc.get("environment", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VbpError(f"{path} is a malformed latency table ({malformed(exc)}); measure it again with vbp profile") from exc
        table.validate(path)
        return table

    def validate(self, source: str | os.PathLike = "the latency table") -> None:
        """Raise VbpError unless every curve has ascending widths ending at its shape's full width, positive
        times, every site points at a shape, and the fixed cost lies in [0, full_ms)."""
        for shape, curve in zip(self.shapes, self.curves):
            w = curve.widths
            if not w or len(w) != len(curve.ms) or w != sorted(set(w)) or w[0] < 0 or w[-1] != shape.hidden:
                raise VbpError(f"{source}: the widths of shape {shape.in_features}->{shape.hidden} are invalid")
            if not all(np.isfinite(curve.ms)) or min(curve.ms) < 0:
                raise VbpError(f"{source}: shape {shape.in_features}->{shape.hidden} has negative or non-finite times "
                               "(NaN, inf); measure it again with vbp profile")
        if len(self.shapes) != len(self.curves) or any(not 0 <= i < len(self.shapes) for i in self.sites.values()):
            raise VbpError(f"{source}: its sites point at shapes it does not have")
        if not (np.isfinite(self.fixed_ms) and np.isfinite(self.full_ms) and 0 <= self.fixed_ms < self.full_ms):
            raise VbpError(
                f"{source}: its fixed cost (the model without MLPs, {self.fixed_ms:g} ms) must be at least 0 and below "
                f"the full model's {self.full_ms:g} ms, or it predicts impossible speed-ups; measure it again with "
                "vbp profile"
            )
