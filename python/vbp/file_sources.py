"""What a file may ask vbp to build: a pruned-model file names the architecture it was cut from, and loading it
must never run code the file chooses, nor allocate what its tensors do not justify.

- A `py:MODULE:FUNCTION` source is code: it is imported and called only when the user names that same builder
  (`--model py:...`, `load_pruned(path, model="py:...")`).
- timm and torchvision sources carry constructor keyword arguments: plain JSON values only, and none of the
  arguments that load weights or configurations from elsewhere (a checkpoint path is a pickle on some versions).
- A Hugging Face source carries a class name (a transformers model class, checked by the family) and a config:
  its attention implementation must be one transformers ships (a name with '/' downloads a kernel from the Hub).
- Sizes: the architecture is first built on the meta device (no memory), its tensors' shapes must equal the
  file's, and the unpruned architecture (built before it is narrowed) must fit in this machine's free memory.
"""

import os

from .errors import VbpError
from .model_ids import canonical_id, comparable_id

# constructor arguments that fetch weights, configurations or files instead of describing an architecture
_LOADING_KWARGS = frozenset(
    {"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "weights",
     "weights_backbone", "progress", "pretrained_strict"}
)
_ATTENTION_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                   "experts_implementation", "_experts_implementation", "_experts_implementation_internal")
_SHIPPED_ATTENTION = (None, "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def check_source(source: object, named: str | None, path) -> dict:
    """`source` (a pruned-model file's "source") if vbp may build it; else a VbpError saying why.

    named: the model id the user gave for this file (None when they gave none)."""
    if not isinstance(source, dict) or not isinstance(source.get("model"), str):
        raise VbpError(f"{path} names no model to rebuild (its 'source' is malformed); save it again")
    model = source["model"]
    if named is not None and comparable_id(named) != comparable_id(model):  # a model named for nothing would be ignored
        raise VbpError(
            f"{path} was pruned from {model}, not {named}"
            + (", and vbp never runs code a file names: name that builder if you trust it" if model.startswith("py:")
               else ": name the model it was pruned from, or none")
        )
    if model.startswith("py:"):
        if named is None or canonical_id(named) != canonical_id(model):
            raise VbpError(
                f"{path} was pruned from the Python builder {model}, and vbp never runs code a file names: if you "
                f"trust that builder, name it yourself (--model {model}; load_pruned(path, model='{model}'))"
            )
    kwargs = source.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise VbpError(f"{path} has malformed constructor arguments for {model}; save it again")
    loading = sorted(_LOADING_KWARGS & kwargs.keys())
    if loading and not model.startswith("py:"):
        raise VbpError(
            f"{path} asks to build {model} with {', '.join(loading)}, which load files or weights from elsewhere; "
            "vbp files never do: this file was not written by vbp.save_pruned"
        )
    if model.startswith(("hf:", "gguf:")):
        _check_attention(source.get("config"), path)
    return source


def _check_attention(config: object, path) -> None:
    """Refuse a config (or sub-config) whose attention implementation is not one transformers ships."""
    if isinstance(config, list):
        for item in config:
            _check_attention(item, path)
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        if key in _ATTENTION_KEYS and not (value in _SHIPPED_ATTENTION or isinstance(value, dict)):
            raise VbpError(
                f"{path} asks for the attention implementation {value!r}, which is not one transformers ships (a "
                "Hub kernel would be downloaded and run); vbp files never do: this file was not written by vbp"
            )
        _check_attention(value, path)


def check_fits_in_memory(parameter_bytes: int, model: str, path) -> None:
    """Refuse to build an architecture whose tensors need more memory than this machine has free."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: nothing to compare with
        return
    if parameter_bytes > free:
        raise VbpError(
            f"{path} names {model} of {parameter_bytes / 2**30:.1f} GiB before pruning, more than this machine's "
            f"{free / 2**30:.1f} GiB of free memory; load it on a machine with more memory"
        )
