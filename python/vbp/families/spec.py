"""User-named MLP sites: for any model, say which layers make each MLP.

A SiteSpec names the modules that hold one MLP each (`parents`, a pattern over module paths) and, inside
each, the producer layer(s) and the consumer:

    SiteSpec("encoder.layer.*", ["intermediate.dense"], "output.dense")      # BERT-like
    SiteSpec("layers.*.mlp", ["gate_proj", "up_proj"], "down_proj")           # gated: act(gate) * up
    "encoder.layer.*:intermediate.dense->output.dense"                       # the same as text (--sites)
    "layers.*.mlp:gate_proj,up_proj->down_proj@act_fn"                       # @ names the activation module

In a pattern `*` matches one path component and `**` any number of them. A spec that matches no module,
names a layer a matched module lacks, or names layers whose shapes do not chain, is an error that says so.
"""

import re
from dataclasses import asdict, dataclass

from torch import nn

from ..errors import VbpError
from ..sites import MlpSite, chain_problem

_ATTR = "_vbp_site_spec"  # a model's specs, as JSON-able dicts: they stay with it through copy and save


@dataclass(frozen=True)
class SiteSpec:
    """parents: pattern of the modules holding one MLP; producers: fc1, or (gate, up); consumer: fc2;
    act: the activation module on fc1's output, when there is one (optional). Paths relative to the parent."""

    parents: str
    producers: tuple[str, ...]
    consumer: str
    act: str | None = None

    @classmethod
    def parse(cls, text: str) -> "SiteSpec":
        """'PARENTS:FC1[,UP]->FC2[@ACT]' -> SiteSpec."""
        match = re.fullmatch(r"\s*([^:]+):([^->]+)->([^@]+)(?:@(.+))?\s*", text)
        if not match:
            raise VbpError(
                f"site spec '{text}' is not PARENTS:FC1->FC2 (or PARENTS:GATE,UP->DOWN, optionally @ACT), e.g. "
                "'encoder.layer.*:intermediate.dense->output.dense'"
            )
        parents, producers, consumer, act = (g.strip() if g else None for g in match.groups())
        return cls(parents, tuple(p.strip() for p in producers.split(",")), consumer, act).checked()

    @classmethod
    def of(cls, value) -> "SiteSpec":
        if isinstance(value, SiteSpec):
            return value.checked()
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            try:
                return cls(value["parents"], tuple(value["producers"]), value["consumer"], value.get("act")).checked()
            except (KeyError, TypeError) as exc:
                raise VbpError(f"site spec {value} needs 'parents', 'producers' (a list) and 'consumer'") from exc
        raise VbpError(f"a site spec is a SiteSpec, a dict or a 'PARENTS:FC1->FC2' string, not {type(value).__name__}")

    def checked(self) -> "SiteSpec":
        if len(self.producers) not in (1, 2) or not all(self.producers):
            raise VbpError(f"site spec {self}: give one producer (fc1) or two (gate, up)")
        return self

    def parent_regex(self) -> re.Pattern:
        parts = (re.escape(p).replace(r"\*\*", ".*").replace(r"\*", "[^.]+") for p in self.parents.split("."))
        return re.compile(r"\.".join(parts))


def specs_of(spec) -> list[SiteSpec]:
    """One spec or a list of them (SiteSpec, dict or text) -> list[SiteSpec]."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise VbpError("the site spec is empty; name at least one PARENTS:FC1->FC2")
    return [SiteSpec.of(s) for s in items]


def set_spec(model: nn.Module, spec) -> None:
    """Attach user-named sites to `model` (None or [] removes them)."""
    if spec is None or spec == []:
        model.__dict__.pop(_ATTR, None)
        return
    model.__dict__[_ATTR] = [asdict(s) for s in specs_of(spec)]


def model_spec(model: nn.Module) -> list[dict] | None:
    """The site specs attached to `model` (as dicts), or None."""
    return model.__dict__.get(_ATTR)


def find_by_spec(model: nn.Module, spec) -> list[MlpSite]:
    names = [name for name, _ in model.named_modules()]
    sites = []
    for s in specs_of(spec):
        regex = s.parent_regex()
        parents = [n for n in names if regex.fullmatch(n)]
        if not parents:
            sample = ", ".join(n for n in names[1:6])
            raise VbpError(f"site spec '{s.parents}' matches no module of {type(model).__name__} (modules: {sample}, ...)")
        for parent in parents:
            prefix = f"{parent}." if parent else ""
            paths = [prefix + p for p in (*s.producers, s.consumer, *([s.act] if s.act else []))]
            layers = []
            for path in paths:
                try:
                    layers.append(model.get_submodule(path))
                except AttributeError as exc:
                    raise VbpError(f"site spec: module '{parent}' has no '{path[len(prefix):]}' ({path})") from exc
            problem = chain_problem(layers[: len(s.producers)], layers[len(s.producers)])
            if problem:
                raise VbpError(f"site spec: the layers of '{parent}' do not form an MLP: {problem}")
            act = prefix + s.act if s.act else None
            sites.append(MlpSite(parent, model, tuple(paths[: len(s.producers)]), paths[len(s.producers)], act=act))
    return sites
