"""Hugging Face transformers models ("hf:DIR_OR_ID"): loaded by the class config.json's `architectures` names
(its head included; AutoModel when it names none), rebuilt from (class, config).

Sites, found by the module names transformers uses:
- BERT, RoBERTa, ...: a layer with `intermediate.dense` (then `intermediate.intermediate_act_fn`) read by
  `output.dense` (dropout, residual and LayerNorm come after fc2 and change nothing);
- ViT and DeiT (transformers 5), CLIP, DINOv2, SigLIP, ...: a module with `fc1` and `fc2` (activation
  `activation_fn` or `activation`);
- LLaMA, Qwen, Mistral, ...: a gated module with `gate_proj`, `up_proj` and `down_proj`.
A pruned model keeps its class and config; its narrower layers come from vbp's file (`vbp.load_pruned`),
since an HF config holds one `intermediate_size` for all layers.
`online` and `in_torch_hub_cache` serve every family's downloads: with no network, fail at once, unless cached.
"""

import functools
import os
import pickle
import socket
import sys
import urllib.parse
import urllib.request

import torch
from safetensors import SafetensorError
from torch import nn

from ..activations import register_gelu
from ..errors import VbpError
from ..sites import MlpSite, chain_problem
from .base import register

TEXT_LENGTH = 128  # tokens of the input `vbp.count` counts a text model at

# (producers, consumer, activation candidates), relative to the module that holds them.
_PATTERNS = (
    (("intermediate.dense",), "output.dense", ("intermediate.intermediate_act_fn",)),
    (("fc1",), "fc2", ("activation_fn", "activation", "act")),
    (("gate_proj", "up_proj"), "down_proj", ()),
)


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise VbpError("Hugging Face models need the transformers package: pip install transformers") from exc
    return transformers


def _register_gelus() -> None:
    register_gelu("transformers.activations.GELUActivation", "gelu")
    register_gelu("transformers.activations.NewGELUActivation", "gelu_tanh")
    register_gelu("transformers.activations.GELUTanh", "gelu_tanh")  # transformers 5


NO_NETWORK = "no network: give --checkpoint or a local folder"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def online(url: str) -> bool:
    """Whether the server of `url` can be reached, so that a download is worth trying: never under HF_HUB_OFFLINE
    or TRANSFORMERS_OFFLINE (for every family's downloads), else a TCP connection within 2 s (to the proxy when
    one is set), remembered per server. The libraries themselves retry for about a minute before giving up."""
    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARS):
        return False
    target = urllib.parse.urlsplit(url)
    server = urllib.parse.urlsplit(urllib.request.getproxies().get(target.scheme) or url)
    return _connects(server.hostname or "", server.port or (443 if server.scheme == "https" else 80))


@functools.cache
def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def in_torch_hub_cache(url: str) -> bool:
    """Whether torch.hub's download cache holds `url` (timm and torchvision read it there before downloading)."""
    filename = os.path.basename(urllib.parse.urlsplit(url).path)
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", filename))


def create(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """The model in the folder (or Hub id) `name`, always with its weights (`pretrained` changes nothing), of the
    class its config.json's `architectures` names. A Hub id loads from the local cache, else from the Hub."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise VbpError(
                f"{name} has no config.json: not a Hugging Face model folder; give the folder save_pretrained wrote"
            )
        # the resolved path becomes the model's id (config._name_or_path): a saved pruned model then finds its
        # folder from any working directory
        return _load(os.path.realpath(name), "that folder", **kwargs)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import ENDPOINT
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise VbpError(f"hf:{name} is no folder here, nor a Hub id: give the folder save_pretrained wrote") from exc
    offline = not online(ENDPOINT)
    if offline and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise VbpError(
            f"hf:{name} is no folder here nor in the Hub cache, and there is {NO_NETWORK} (hf:DIR, the folder "
            "save_pretrained wrote)"
        )
    kwargs.setdefault("local_files_only", offline)
    return _load(name, "the Hub cache (no network)" if offline else "the Hub", **kwargs)


def _load(name: str, where: str, **kwargs) -> nn.Module:
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=kwargs.get("local_files_only", False))
        return _model_class(config, name).from_pretrained(name, **kwargs)
    except VbpError:
        raise
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a pickle: its 40 lines, in one
        raise VbpError(
            f"cannot load the Hugging Face model '{name}' from {where}: its .bin weights hold Python objects besides "
            "tensors, which are never unpickled (they can run code); use a copy with model.safetensors"
        ) from exc
    except (OSError, ValueError, SafetensorError) as exc:
        message = " ".join(str(exc).split())[:400]
        damaged = " (a weights file may be truncated or damaged: copy or download it again)" * isinstance(exc, SafetensorError)
        raise VbpError(f"cannot load the Hugging Face model '{name}' from {where}: {message}{damaged}") from exc


def _model_class(config, name: str) -> type:
    """The transformers class the config's `architectures` names (the head it was saved with), else AutoModel."""
    transformers = _transformers()
    if not getattr(config, "architectures", None):
        return transformers.AutoModel
    architecture = config.architectures[0]
    cls = getattr(transformers, architecture, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise VbpError(
            f"the config.json of {name} names the architecture {architecture}, which transformers "
            f"{transformers.__version__} does not have: upgrade transformers, or delete \"architectures\" from "
            "config.json to load the model without its head"
        )
    return cls


def check_tokenizer(model: nn.Module, tokenizer, source: str) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table (they would fail, or read another
    token's row, deep inside a forward pass)."""
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # no token embedding table (a vision model)
        return
    if len(tokenizer) > rows:
        raise VbpError(
            f"the tokenizer of {source} has {len(tokenizer)} tokens but the model's embedding table only {rows} "
            "rows (config.json vocab_size): save the model's own tokenizer beside it, or resize the embeddings "
            "(model.resize_token_embeddings(len(tokenizer))) and save again"
        )


def owns(model: nn.Module) -> bool:
    if "transformers" not in sys.modules:  # no model is a transformers model before transformers is imported
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def model_id(model: nn.Module) -> str:
    return "hf:" + (getattr(model.config, "_name_or_path", "") or type(model).__name__)


def describe(model: nn.Module) -> dict:
    return {"model": model_id(model), "class": type(model).__name__, "config": model.config.to_dict()}


def build(desc: dict) -> nn.Module:
    transformers = _transformers()
    cls = getattr(transformers, desc.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise VbpError(f"'{desc.get('class')}' is not a transformers model class; the file is not a vbp HF model")
    return cls(cls.config_class.from_dict(desc["config"]))


def example_input(model: nn.Module) -> dict:
    cfg = model.config
    if hasattr(cfg, "image_size") and hasattr(cfg, "num_channels"):
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        return {"pixel_values": torch.zeros(1, cfg.num_channels, size, size)}
    return {"input_ids": torch.zeros(1, TEXT_LENGTH, dtype=torch.int64)}


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def find(model: nn.Module) -> tuple[list[MlpSite], list[str]]:
    if not owns(model):
        return [], []
    sites, skipped = [], []
    for name, module in model.named_modules():
        for producers, consumer, acts in _PATTERNS:
            layers = [_get(module, p) for p in (*producers, consumer)]
            if any(layer is None for layer in layers):
                continue
            problem = chain_problem(layers[:-1], layers[-1])
            if problem:
                skipped.append(f"{name} ({problem})")
                continue
            prefix = f"{name}." if name else ""
            act = next((a for a in acts if isinstance(_get(module, a), nn.Module)), None)
            sites.append(
                MlpSite(
                    name,
                    model,
                    tuple(prefix + p for p in producers),
                    prefix + consumer,
                    act=prefix + act if act else None,
                )
            )
    return sites, skipped


_register_gelus()
register(
    sys.modules[__name__],
    "Hugging Face",
    "hf:",
    looked_for="transformers models with intermediate.dense -> output.dense, fc1 -> fc2, or "
    "gate_proj/up_proj -> down_proj",
)
