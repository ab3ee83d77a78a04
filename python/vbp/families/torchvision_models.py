"""torchvision models ("tv:NAME"): created with torchvision.models.get_model, rebuilt from (name, kwargs).

Sites: in any nn.Sequential, a Linear, an activation, any dropouts, and a Linear, in that order: the
`MLP`/`MLPBlock` of ViT and Swin (children 0, 1, 3), and the Linear-GELU-Linear inside ConvNeXt's CNBlock.
"""

import sys

import torch
from torch import nn

from ..errors import VbpError
from ..model_attributes import TORCHVISION_SOURCE
from ..sites import MlpSite, chain_problem
from .base import register

ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Mish, nn.LeakyReLU)


def create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise VbpError(f"unknown torchvision model '{name}'; torchvision.models.list_models() lists them")
    if pretrained:
        kwargs = {"weights": "DEFAULT", **kwargs}
        _check_download(name, kwargs["weights"])
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        message = " ".join(str(exc).split())
        raise VbpError(f"cannot load the pretrained weights of 'tv:{name}': {message}") from exc
    kwargs.pop("weights", None)
    setattr(model, TORCHVISION_SOURCE, {"model": f"tv:{name}", "kwargs": kwargs})
    return model


def _check_download(name: str, weights) -> None:
    """A VbpError at once when the weights are neither in torch.hub's cache nor on a server within reach."""
    import torchvision

    from .hf import NO_NETWORK, in_torch_hub_cache, online

    entry = torchvision.models.get_model_weights(name).verify(weights)
    if entry is not None and not in_torch_hub_cache(entry.url) and not online(entry.url):
        raise VbpError(f"cannot download the pretrained weights of 'tv:{name}': {NO_NETWORK}")


def owns(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def model_id(model: nn.Module) -> str:
    return getattr(model, TORCHVISION_SOURCE, {}).get("model", "")


def describe(model: nn.Module) -> dict:
    if not hasattr(model, TORCHVISION_SOURCE):
        raise VbpError(
            f"this {type(model).__name__} was not made by vbp.create_model('tv:NAME'), so its torchvision name is "
            "unknown; pass name='tv:NAME' (and kwargs=) to save_pruned"
        )
    return dict(getattr(model, TORCHVISION_SOURCE))


def build(desc: dict) -> nn.Module:
    return create(desc["model"].removeprefix("tv:"), **desc.get("kwargs", {}))


def example_input(model: nn.Module) -> torch.Tensor:
    size = getattr(model, "image_size", 224)
    return torch.zeros(1, 3, size, size)


def _mlps(seq: nn.Sequential) -> list[tuple[int, int, int]]:
    """(fc1, act, fc2) child indices of every Linear, activation, dropouts..., Linear run in `seq`."""
    kids = list(seq.children())
    found = []
    for i in range(len(kids) - 2):
        if not (isinstance(kids[i], nn.Linear) and isinstance(kids[i + 1], ACTIVATIONS)):
            continue
        j = i + 2
        while j < len(kids) and isinstance(kids[j], (nn.Dropout, nn.Identity)):
            j += 1
        if j < len(kids) and isinstance(kids[j], nn.Linear):
            found.append((i, i + 1, j))
    return found


def find(model: nn.Module) -> tuple[list[MlpSite], list[str]]:
    sites, skipped = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        runs = _mlps(module)
        names = list(module._modules)
        for fc1, act, fc2 in runs:
            prefix = f"{name}." if name else ""
            problem = chain_problem([module[fc1]], module[fc2])
            site_name = name if len(runs) == 1 else f"{prefix}{names[fc1]}"
            if problem:
                skipped.append(f"{site_name} ({problem})")
                continue
            # A Sequential that is exactly this MLP (plus trailing dropouts) can be swapped whole by vbp.compact.
            whole = fc1 == 0 and all(isinstance(m, (nn.Dropout, nn.Identity)) for m in list(module)[fc2 + 1 :])
            sites.append(
                MlpSite(
                    site_name,
                    model,
                    (prefix + names[fc1],),
                    prefix + names[fc2],
                    act=prefix + names[act],
                    block=name if whole and name else None,
                )
            )
    return sites, skipped


register(
    sys.modules[__name__],
    "torchvision",
    "tv:",
    looked_for="nn.Sequential runs Linear -> activation -> (Dropout) -> Linear (torchvision MLP, ConvNeXt blocks)",
)
