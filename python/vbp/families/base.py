"""The model family type and its registry: what a family file provides, and how ids and models find theirs."""

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..registry import Registry
from ..sites import MlpSite


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
