"""GGUF files ("gguf:FILE"): a causal LM as llama.cpp serves it (LLaMA, Mistral, Qwen2, ...), dequantized to float by
transformers (with the gguf package) once, then read from a cache folder.

The cache is a plain Hugging Face folder (safetensors weights, config, tokenizer) under $VBP_CACHE/gguf (default
~/.cache/vbp/gguf), named by the file's resolved path, size and modification time: a new or changed file is
converted, an unchanged one is not read again. It is written in a temporary folder and renamed into place, so a
cache folder is whole or absent.

The model is the transformers model of that folder (the hf family finds its sites and counts it; `folder_of` gives
the folder, where its tokenizer is) with the id "gguf:/resolved/FILE.gguf", kept on the model: a pruned one
rebuilds from class and config like an hf: model, without the GGUF, and the id creates the unpruned one again.
"""

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from torch import nn

from ..errors import VbpError
from ..model_attributes import GGUF_SOURCE
from .base import register

# `hf` is imported where used: this family must register before hf's, which owns every transformers model


def cache_root() -> Path:
    """Where converted GGUF files are kept: $VBP_CACHE/gguf, else ~/.cache/vbp/gguf."""
    return Path(os.environ.get("VBP_CACHE") or Path.home() / ".cache" / "vbp") / "gguf"


def cache_folder(path: Path) -> Path:
    """The Hugging Face folder the GGUF file `path` converts to, converted now if it is not cached."""
    path = Path(os.path.realpath(path))
    if path.is_dir():
        raise VbpError(f"gguf:{path} is a folder, not a GGUF file: give the path of the .gguf file (gguf:FILE)")
    if not path.is_file():
        raise VbpError(f"gguf:{path}: no such file; give the path of a .gguf file (gguf:FILE)")
    stat = path.stat()
    key = hashlib.blake2b(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    target = cache_root() / f"{path.stem}-{key}"
    if not target.is_dir():
        _convert(path, target)
    return target


def _convert(path: Path, target: Path) -> None:
    """Dequantize `path` into the folder `target`: model (float, safetensors), config and tokenizer."""
    from .hf import _transformers

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise VbpError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give a .gguf model file")
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    print(f"dequantizing {path} once, into {target}", file=sys.stderr)
    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name, local_files_only=True)
    try:  # transformers and gguf parse the user's file: any exception, said in one line
        model = transformers.AutoModelForCausalLM.from_pretrained(**where)
        tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
    except Exception as exc:
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        raise VbpError(
            f"transformers {transformers.__version__} cannot load {path} ({message}); give a GGUF causal LM of an "
            "architecture it reads (LLaMA, Mistral, Qwen2, ...), with the gguf package installed"
        ) from exc
    model.hf_quantizer = None  # the weights are floats now; the quantizer's marker would block save_pretrained
    del model.config.quantization_config
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
            stage.rename(target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        if not target.is_dir():  # not another process that got there first
            raise VbpError(f"cannot write the GGUF cache {target}: {exc}; set VBP_CACHE to a writable folder") from exc


def create(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """The model of the GGUF file `name`, always with its weights (`pretrained` changes nothing), from its cache
    folder; kwargs go to transformers' from_pretrained."""
    from . import hf

    if not name:
        raise VbpError("gguf: names no file: give the path of a .gguf file (gguf:FILE)")
    path = Path(os.path.realpath(name))
    model = hf.create(str(cache_folder(path)), **kwargs)
    setattr(model, GGUF_SOURCE, f"gguf:{path}")
    return model


def folder_of(model: nn.Module) -> Path:
    """The cache folder of a gguf: model's file (converted again if it was removed): its tokenizer's folder."""
    return cache_folder(Path(model_id(model).removeprefix("gguf:")))


def owns(model: nn.Module) -> bool:
    return GGUF_SOURCE in model.__dict__


def model_id(model: nn.Module) -> str:
    return model.__dict__[GGUF_SOURCE]


def describe(model: nn.Module) -> dict:
    from . import hf

    return {**hf.describe(model), "model": model_id(model)}


def build(desc: dict) -> nn.Module:
    from . import hf

    model = hf.build(desc)
    setattr(model, GGUF_SOURCE, desc["model"])
    return model


def example_input(model: nn.Module) -> dict:
    from . import hf

    return hf.example_input(model)


register(sys.modules[__name__], "GGUF", "gguf:")
