"""User-named MLP sites: for any model, say which layers make each MLP.

A SiteSpec names the modules that hold one MLP each (`parents`, a pattern over module paths) and, inside
each, the producer layer(s) and the consumer:

    SiteSpec("encoder.layer.*", ["intermediate.dense"], "output.dense")      # BERT-like
    SiteSpec("layers.*.mlp", ["gate_proj", "up_proj"], "down_proj")           # gated: act(gate) * up
    "encoder.layer.*:intermediate.dense->output.dense"                       # the same as text (--sites)
    "layers.*.mlp:gate_proj,up_proj->down_proj@act_fn"                       # @ names the activation module

In a pattern `*` matches one path component and `**` any number of them. A spec that matches no module,
names a layer a matched module lacks, or names layers whose shapes do not chain, is an error that says so.
Shapes can chain where the data does not flow: `check_flow` runs the model on an example input to see that each
consumer reads its producers' activated output, channel by channel (the command line does it for --sites).
"""

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import VbpError
from ..model_attributes import SITE_SPEC
from ..sites import MlpSite, chain_problem


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
        model.__dict__.pop(SITE_SPEC, None)
        return
    model.__dict__[SITE_SPEC] = [asdict(s) for s in specs_of(spec)]


def model_spec(model: nn.Module) -> list[dict] | None:
    """The site specs attached to `model` (as dicts), or None."""
    return model.__dict__.get(SITE_SPEC)


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


class _Seen(Exception):
    """Ends a forward pass once the consumer's input has been seen."""


def _channel_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Conv2d) else -1


def _rows(t: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A layer's input or output as [N, C] rows, C its channels."""
    t = t.detach().movedim(_channel_dim(layer), -1)
    return t.reshape(-1, t.shape[-1])


def _randomised(example):
    """The example input with its floating tensors replaced by seeded normal values (token ids stay): zeros would
    leave biasless gated MLPs with no hidden value to follow."""
    g = torch.Generator().manual_seed(0)

    def fill(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype) if t.is_floating_point() else t

    return {k: fill(v) for k, v in example.items()} if isinstance(example, Mapping) else fill(example)


@torch.no_grad()
def check_flow(model: nn.Module, example) -> None:
    """Raise VbpError unless every site of the model's spec is an MLP of its forward pass.

    On one example input (`vbp.models.example_input`; its values are replaced by random ones), each site's producers and
    consumer must run, and adding to one hidden channel k of the producer's output (`up` of a gated site) must
    change the consumer's input in channel k and nowhere else. Costs one forward pass, plus one up to the
    consumer per site. The families' own sites need no check: their libraries' structure gives them."""
    from ..batches import run_model

    spec = model_spec(model)
    if not spec:
        return
    sites = find_by_spec(model, spec)
    example = _randomised(example)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        seen = _first_pass(model, sites, lambda: run_model(model, example, device))
        for site in sites:
            _check_site(model, site, seen, lambda: run_model(model, example, device))
    finally:
        model.train(was_training)


def _first_pass(model: nn.Module, sites: list[MlpSite], run) -> dict:
    """{("peak", site): the largest output per channel of its first producer, ("in", consumer): its input,
    ("ran", path): True} from one forward pass (the first call of each layer)."""
    seen = {}
    handles = []
    for site in sites:
        first = site.producers[0]
        for path in site.producers:
            layer = model.get_submodule(path)

            def output(module, inputs, out, path=path, peak=path == first, name=site.name):
                seen[("ran", path)] = True
                if peak:
                    seen.setdefault(("peak", name), _rows(out, module).amax(0))

            handles.append(layer.register_forward_hook(output))

        def consumer_input(module, inputs, path=site.consumer):
            seen[("ran", path)] = True
            seen.setdefault(("in", path), inputs[0].detach().clone())

        handles.append(site.consumer_layer.register_forward_pre_hook(consumer_input))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_site(model: nn.Module, site: MlpSite, seen: dict, run) -> None:
    """Add to channel k of the (up) producer's output and compare the consumer's input with the first pass's."""
    for path in (*site.producers, site.consumer):
        if ("ran", path) not in seen:
            raise VbpError(
                f"site spec: '{path}' (site '{site.name}') does not run when the model runs on an example input; "
                "name layers its forward pass uses"
            )
    k = int(seen[("peak", site.name)].argmax())  # the most active neuron: its activation passes a change on
    producer = site.producers[-1]
    got = {}

    def bump(module, inputs, out):
        out = out.clone()
        channel = out.select(_channel_dim(module), k)
        channel += 1 + channel.abs()
        return out

    def read(module, inputs):
        got["in"] = inputs[0].detach()
        raise _Seen

    handles = [
        model.get_submodule(producer).register_forward_hook(bump),
        site.consumer_layer.register_forward_pre_hook(read),
    ]
    try:
        run()
    except _Seen:
        pass
    finally:
        for h in handles:
            h.remove()
    consumer, first = site.consumer_layer, seen[("in", site.consumer)]
    before = _rows(first, consumer).double()
    change = (_rows(got.get("in", first), consumer).double() - before).abs()
    tol = 16 * torch.finfo(first.dtype).eps * float(before.abs().max())
    hidden = "act(gate(x)) * up(x)" if site.gated else f"act({producer}(x))"
    if float(change[:, k].max()) <= tol:
        raise VbpError(
            f"site spec: '{site.consumer}' does not read the output of '{producer}' (site '{site.name}'): changing "
            f"hidden channel {k} left its input unchanged on an example input; name the layer that reads {hidden}"
        )
    others = torch.cat([change[:, :k], change[:, k + 1 :]], 1)
    mixed = int((others > tol).any(0).sum())
    if mixed:
        raise VbpError(
            f"site spec: '{site.consumer}' does not read '{producer}' channel by channel (site '{site.name}'): "
            f"changing hidden channel {k} changed {mixed} other channels of its input; name the layer that reads "
            f"{hidden} with nothing mixing channels between them"
        )
