"""Model families: where a model comes from, how to rebuild it, and where its MLP sites are.

A family is one file in this package, registered in `FAMILIES` (in order) by `register`. Each knows:
- its model ids (a prefix: "" timm names, "hf:" Hugging Face, "tv:" torchvision, "py:" a Python builder),
  how to create such a model, and how to describe a model of its own so that `build` rebuilds its
  architecture (what `save_pruned` stores, as JSON);
- optionally, how to find MLP sites in any model (`find`), structurally, by the module classes and names
  of its library.
User-named sites (`vbp.families.spec`) override the families' finders for one model.
"""

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import VbpError
from ..registry import Registry
from ..sites import MlpSite, check_sites


@dataclass
class Family:
    """name: shown in messages; prefix: of its model ids ("" for timm names).
    create(name, pretrained, **kwargs) -> model; owns(model) -> whether the model is of this family;
    model_id(model) -> its id (with the prefix); describe(model) -> JSON-able dict that `build` turns back into
    the architecture (random or uninitialised weights); find(model) -> (sites, skipped "path (reason)");
    example_input(model) -> the input `vbp.count` runs; looked_for: what `find` looks for, for messages.
    """

    name: str
    prefix: str
    create: Callable[..., nn.Module]
    owns: Callable[[nn.Module], bool]
    model_id: Callable[[nn.Module], str]
    describe: Callable[[nn.Module], dict]
    build: Callable[[dict], nn.Module]
    example_input: Callable[[nn.Module], object]
    find: Callable[[nn.Module], tuple[list[MlpSite], list[str]]] | None = None
    looked_for: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


FAMILIES: Registry[str, Family] = Registry("model family")


def register(module, name: str, prefix: str, looked_for: str = "", aliases: tuple[str, ...] = ()) -> Family:
    """Register the family a module implements: its functions create, owns, model_id, describe, build,
    example_input and, optionally, find (see `Family`)."""
    fns = [getattr(module, f) for f in ("create", "owns", "model_id", "describe", "build", "example_input")]
    return FAMILIES.register(name, Family(name, prefix, *fns, getattr(module, "find", None), looked_for, aliases))


def family_of(model: nn.Module) -> Family | None:
    """The family a model belongs to (None for a module no family knows)."""
    return next((f for f in FAMILIES.entries() if f.owns(model)), None)


def family_for_id(model_id: str) -> tuple[Family, str]:
    """The family of a model id and the id without its prefix ("hf:dir" -> (hf, "dir"))."""
    for f in sorted(FAMILIES.entries(), key=lambda f: -len(f.prefix)):
        for prefix in (f.prefix, *f.aliases):
            if prefix and model_id.startswith(prefix):
                return f, model_id[len(prefix) :]
    return next(f for f in FAMILIES.entries() if f.prefix == ""), model_id


def sites_of(model: nn.Module, spec=None) -> list[MlpSite]:
    """The MLP sites of `model`: by `spec` (or the spec the model carries), else by the first family that
    finds any (see `vbp.find_sites`)."""
    from .spec import find_by_spec, model_spec, set_spec

    if spec is not None:
        set_spec(model, spec)
    if model_spec(model):
        return check_sites(find_by_spec(model, model_spec(model)))
    skipped = []
    for family in FAMILIES.entries():
        if family.find is None:
            continue
        sites, skips = family.find(model)
        if sites:
            return check_sites(sites)
        skipped += skips
    looked_for = "; ".join(f"{f.name}: {f.looked_for}" for f in FAMILIES.entries() if f.find is not None)
    detail = f". Skipped: {', '.join(skipped)}" if skipped else ""
    raise VbpError(
        f"{type(model).__name__} has no prunable MLP block. Looked for {looked_for}{detail}. "
        "Name the layers yourself with a site spec (find_sites(model, spec=...), --sites "
        "'PARENTS:FC1->FC2'; see vbp.families.spec)"
    )


# registration order: the order families' finders are tried in
# isort: off
from . import timm_models, hf, python_builder, torchvision_models  # noqa: E402,F401
# isort: on
