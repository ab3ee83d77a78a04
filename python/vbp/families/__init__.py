"""Model families: where a model comes from, how to rebuild it, and where its MLP sites are.

A family is one file in this package, registered in `FAMILIES` (in order) by `register`. Each knows:
- its model ids (a prefix: "" timm names, "hf:" Hugging Face, "gguf:" a GGUF file, "tv:" torchvision, "py:" a
  Python builder),
  how to create such a model, and how to describe a model of its own so that `build` rebuilds its
  architecture (what `save_pruned` stores, as JSON);
- optionally, how to find MLP sites in any model (`find`), structurally, by the module classes and names
  of its library.
User-named sites (`vbp.families.spec`) override the families' finders for one model.
"""

from torch import nn

from ..errors import VbpError
from ..sites import MlpSite, check_sites
from .base import FAMILIES, Family, family_for_id, family_of, register  # noqa: F401  (the package's API)
from .spec import find_by_spec, model_spec, set_spec


def sites_of(model: nn.Module, spec=None) -> list[MlpSite]:
    """The MLP sites of `model`: by `spec` (or the spec the model carries), else by the first family that
    finds any (see `vbp.find_sites`)."""
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


def find_sites(model: nn.Module, spec=None) -> list[MlpSite]:
    """All prunable MLP sites of `model`, in module order.

    spec: user-named sites (see `vbp.families.spec`): a SiteSpec, its dict or its text form, or a list of
        them. It stays with the model, so later calls (calibrate, prune, save) find the same sites.
    Without a spec, the first model family (`vbp.families`) that finds sites in the model gives them.
    Raises VbpError when there are none, naming what was looked for and any blocks that were skipped.
    """
    if not isinstance(model, nn.Module):
        raise VbpError(f"find_sites takes a torch.nn.Module, got {type(model).__name__} (vbp.create_model builds one by id)")
    return sites_of(model, spec)


def site_widths(model: nn.Module) -> dict[str, int]:
    """Hidden width of every site, by site name."""
    return {site.name: site.width for site in find_sites(model)}


# registration order: the order families' finders are tried in, and the first that owns a model is its family
# isort: off
from . import timm_models, gguf, hf, python_builder, torchvision_models  # noqa: E402,F401
# isort: on
