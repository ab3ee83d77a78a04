"""Save and load pruned models of any family: safetensors weights plus JSON (where the architecture comes
from, the site spec if any, every site's width and whether its consumer has a bias, and how it was pruned:
criterion and compensation as versioned dicts, `vbp.model_attributes.PRUNING`).

Loading rebuilds the architecture through its family (`vbp.families`: a timm name and kwargs, an HF class
and config, a torchvision name, a Python builder), narrows each MLP site to its saved width and loads the
weights; nothing is ever unpickled. Version 1 files (timm only, widths alone) still load.
"""

import contextlib
import json
import os

import torch
from torch import nn

from .devices import check_device
from .errors import VbpError, malformed
from .families import find_sites
from .families.spec import model_spec
from .file_sources import check_fits_in_memory, check_source
from .files import read_safetensors, write_safetensors
from .model_attributes import PRUNING
from .models import build_model, model_source
from .prune import current_record

FORMAT = "vbp-model/2"
FORMAT_V1 = "vbp-model/1"
_UNPRUNED_BYTES = "_vbp_unpruned_bytes"  # set on a skeleton built on the meta device


def _site_meta(model: nn.Module) -> dict[str, dict]:
    return {s.name: {"width": s.width, "consumer_bias": s.consumer_layer.bias is not None} for s in find_sites(model)}


def _build(
    source: dict, spec: list | None, sites: dict[str, dict], device: torch.device | str = "cpu", max_parameters=None
) -> nn.Module:
    """The architecture `source` describes with every MLP site narrowed as `sites` says (weights uninitialised).
    max_parameters: stop building (a VbpError) once the constructor has made more parameters than this."""
    with torch.device(device):
        with _parameter_limit(max_parameters, source["model"]):
            model = build_model(source)
        if device == "meta":
            model.__dict__[_UNPRUNED_BYTES] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        found = {s.name: s for s in find_sites(model, spec)}
        if set(found) != set(sites):
            raise VbpError(
                f"'{source['model']}' rebuilds with MLP sites {sorted(found)[:3]}..., not the saved "
                f"{sorted(sites)[:3]}...: the file is damaged, or was written for another version of its model's library"
            )
        for name, site in sites.items():
            found[name].set_width(site["width"], consumer_bias=site.get("consumer_bias"))
    return model


def _check_sizes_fit(source: dict, state: dict[str, torch.Tensor], path) -> None:
    """Refuse timm and torchvision constructor arguments with a whole number larger than the file's weights hold
    (depth 10**9): a size of a model's architecture (depth, width, classes, image size) is never larger than its
    number of weights, and the constructor would work on it before any layer exists (timm lists a drop-path rate
    per block). `_parameter_limit` stops Hugging Face configs, whose constructors make layers at once."""
    if source["model"].startswith(("hf:", "gguf:", "py:")):
        return
    weights = sum(t.numel() for t in state.values())

    def sizes(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            return [n for item in value for n in sizes(item)]
        return [value] if isinstance(value, int) and not isinstance(value, bool) else []

    too_large = [(k, n) for k, v in source.get("kwargs", {}).items() for n in sizes(v) if n > max(weights, 1024)]
    if too_large:
        name, size = too_large[0]
        raise VbpError(
            f"{path} asks to build {source['model']} with {name} {size}, more than the {weights} weights the file "
            "holds: the file is damaged or was not written by vbp.save_pruned"
        )


@contextlib.contextmanager
def _parameter_limit(limit: int | None, name: str):
    """Count the parameters constructors register while the block runs and raise a VbpError past `limit`: a file
    whose constructor arguments ask for far more layers than it has tensors (depth 10**9) is refused while it is
    built, not after it has filled the memory with modules (the meta device holds no data, but every module is a
    Python object)."""
    if limit is None:
        yield
        return
    made = 0

    def count(module, name_, parameter):
        nonlocal made
        made += 1
        if made > limit:
            raise VbpError(
                f"'{name}' as the file describes it has more parameters than the file has tensors ({limit // 2 - 32}): "
                "the file is damaged or was not written by vbp.save_pruned"
            )

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


def save_pruned(model: nn.Module, path: str | os.PathLike, name: str | None = None, kwargs: dict | None = None) -> None:
    """Write `model` (pruned or not) to one safetensors file at `path`, atomically.

    name / kwargs: the model id and create_model keyword arguments that rebuild it (default: what its family
    recorded, see `vbp.create_model`). Checked before writing: the rebuilt skeleton must match.
    """
    source = model_source(model) if name is None else {"model": name, "kwargs": kwargs or {}}
    if name is None and kwargs is not None:
        source["kwargs"] = kwargs
    try:
        source = json.loads(json.dumps(source))
    except TypeError as exc:
        raise VbpError(f"the model's construction arguments are not JSON-serializable ({exc}); pass kwargs=") from exc
    spec, sites = model_spec(model), _site_meta(model)
    state = model.state_dict()
    skeleton = _build(source, spec, sites, device="meta").state_dict()
    mismatched = [k for k in state if k not in skeleton or skeleton[k].shape != state[k].shape]
    if mismatched or len(skeleton) != len(state):
        raise VbpError(
            f"'{source['model']}' with {source.get('kwargs', {})} does not rebuild this model (first mismatched keys: "
            f"{mismatched[:3] or sorted(set(skeleton) - set(state))[:3]}); pass the right name= and kwargs="
        )
    pruning = model.__dict__.get(PRUNING)
    write_safetensors(path, state, {"format": FORMAT, "source": source, "spec": spec, "sites": sites, "pruning": pruning})


def load_pruned(path: str | os.PathLike, device: torch.device | str = "cpu", model: str | None = None) -> nn.Module:
    """Rebuild a model written by `save_pruned`, in eval mode, on `device`.

    model: the id of the model the file was pruned from, as the user names it; required for a `py:` builder,
    which is code and never run because a file names it (`vbp.file_sources`). Nothing is allocated before the
    file's tensors are checked against the architecture it names."""
    check_device(device)
    state, meta = read_safetensors(path, (FORMAT, FORMAT_V1), "pruned model")
    try:
        if meta["format"] == FORMAT_V1:
            source, spec = {"model": meta["model"], "kwargs": meta["kwargs"]}, None
            sites = {name: {"width": _width(w)} for name, w in meta["widths"].items()}
        else:
            source, spec, sites = meta["source"], meta["spec"], meta["sites"]
            sites = {name: {"width": _width(s["width"]), "consumer_bias": bool(s["consumer_bias"])} for name, s in sites.items()}
        check_source(source, model, path)
        _check_sizes_fit(source, state, path)
        try:
            skeleton = _build(source, spec, sites, device="meta", max_parameters=2 * len(state) + 64)  # margin: ties
        except VbpError as exc:
            if str(exc).startswith("site spec"):  # the file's spec, not one the user gave: say so
                raise VbpError(f"the MLP sites {path} names do not fit '{source['model']}' ({exc}); the file is damaged "
                               "or was written for another version of its model") from exc
            raise
        _check_shapes(skeleton, state, path, source["model"])
        built = _build(source, spec, sites)
    except VbpError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise VbpError(f"{path} has incomplete or malformed pruned-model metadata ({malformed(exc)}); save it again") from exc
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:  # a model saved in float64 (or bf16) loads as it was saved
        built.to(dtypes.pop())
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VbpError(f"{path} does not match the model it names ('{source['model']}'): {exc}") from exc
    if isinstance(meta.get("pruning"), dict):
        built.__dict__[PRUNING] = current_record(meta["pruning"])  # older files name strategies by strings
    return built.to(device).eval()


def _width(value) -> int:
    """A site width from a file: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a site width of {value!r}")
    return value


def _check_shapes(skeleton: nn.Module, state: dict[str, torch.Tensor], path, name: str) -> None:
    """Refuse a file whose tensors are not exactly those of the architecture it names (`skeleton`, on the meta
    device), and an architecture too large to build here, before anything is allocated."""
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        first = next((k for k in expected if expected[k] != found.get(k)), None) or next(k for k in found if k not in expected)
        raise VbpError(
            f"{path} does not match the model it names ('{name}'): tensor {first} is {found.get(first)} in the "
            f"file, {expected.get(first)} in the model; the file is damaged or was not written by vbp.save_pruned"
        )
    check_fits_in_memory(skeleton.__dict__[_UNPRUNED_BYTES], name, path)
