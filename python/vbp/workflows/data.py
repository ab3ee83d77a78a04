"""Data for calibration and evaluation: a folder of images, a text file of sentences, the embedded digits,
or synthetic inputs."""

import hashlib
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import VbpError
from ..families import hf, python_builder
from ..models import example_input, model_name
from .digits import digits_split
from .text import Sentences, Tokenize, read_sentences, tokenizer_of
from .unreadable import skip_unreadable

DIGITS_SHAPE = (1, 8, 8)  # one image of `digits_split`
# a text file has no splits; these are its two halves, for a run that calibrates and evaluates on one file
TEXT_HALVES = ("calibration_half", "held_out_half")


def synthetic(model: nn.Module, num_inputs: int, seed: int = 0) -> TensorDataset:
    """Random inputs shaped like the model's example input (normal images; uniform token ids for a text model),
    with label 0: exercises an architecture, not accuracy."""
    example = example_input(model, None)
    g = torch.Generator().manual_seed(seed)
    if isinstance(example, dict):
        ids = example["input_ids"]
        vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
        inputs = torch.randint(0, vocab, (num_inputs, *ids.shape[1:]), generator=g)
    else:
        inputs = torch.randn(num_inputs, *example.shape[1:], generator=g)
    return TensorDataset(inputs, torch.zeros(num_inputs, dtype=torch.int64))


def is_text_model(model: nn.Module) -> bool:
    """A Hugging Face model that takes token ids and no images (its data is a text file of sentences)."""
    return hf.owns(model) and "input_ids" in hf.example_input(model)


def dataset(
    spec: str,
    model: nn.Module,
    split: str = "train",
    num_images: int | None = None,
    training: bool = False,
    skip_bad: bool = False,
) -> Dataset:
    """The data set named by `spec`: "digits" (its `split`), "synthetic" (`num_images` random inputs), a .txt
    file of sentences (tokenized by the model's tokenizer; all of them, or with a `split` of TEXT_HALVES its first
    or second half, see `text_half`), or an image folder (read with training transforms when `training`). See
    `check_data` for what fits which model."""
    check_data(spec, model)
    if spec == "digits":
        return digits_split(split)
    if spec == "synthetic":
        return synthetic(model, num_images or 1)
    if spec.endswith(".txt") or os.path.isfile(spec):
        if not spec.endswith(".txt"):
            raise VbpError(f"{spec} is a file but not a .txt file of sentences; give a .txt file or an image folder")
        sentences = read_sentences(spec)
        return Sentences(text_half(sentences, split, spec) if split in TEXT_HALVES else sentences, tokenizer_of(model))
    from .images import image_folder  # torchvision: imported when used

    return image_folder(spec, model, training, skip_bad)


def text_half(sentences: list[str], split: str, spec: str) -> list[str]:
    """The first half of `sentences` ("calibration_half") or the rest ("held_out_half"), so that a model pruned
    now is not evaluated on the sentences it was calibrated on."""
    if len(sentences) < 4:
        raise VbpError(
            f"{spec} holds {len(sentences)} sentences: a model pruned now is calibrated on the first half of them and "
            "evaluated on the other; give at least 4 (or --stats of a calibration on other sentences)"
        )
    half = len(sentences) // 2
    return sentences[:half] if split == TEXT_HALVES[0] else sentences[half:]


def data_fingerprint(spec: str) -> str | None:
    """32 hex digits that change when the data `spec` does: a file's bytes, or every file's relative path, size
    and modification time in a folder; None for the embedded digits and synthetic inputs, which never change."""
    if spec in ("digits", "synthetic") or not os.path.exists(spec):
        return None
    digest = hashlib.blake2b(digest_size=16)
    if os.path.isfile(spec):
        with open(spec, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for folder, dirs, files in os.walk(spec):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            info = os.stat(path)
            digest.update(f"{os.path.relpath(path, spec)}:{info.st_size}:{info.st_mtime_ns};".encode())
    return digest.hexdigest()


def check_data(spec: str, model: nn.Module) -> None:
    """A VbpError when the kind of the data `spec` does not fit the model: a text model (`is_text_model`) takes a
    .txt file of sentences or synthetic token ids; other models take images ('digits', a folder, synthetic)."""
    text = spec.endswith(".txt")
    if is_text_model(model) and not text and spec != "synthetic":
        raise VbpError(f"{model_name(model) or hf.model_id(model)} is a text model: give --data FILE.txt (sentences, one per "
                       "line)")
    if text and not is_text_model(model):
        raise VbpError(
            f"{spec} is text, for Hugging Face text models, and {model_name(model) or 'this model'} is not one: "
            "give an image folder, 'digits' or 'synthetic'"
        )
    if spec == "digits" and not python_builder.owns(model) and not is_text_model(model):
        shape = tuple(example_input(model).shape[1:])
        if shape != DIGITS_SHAPE:
            raise VbpError(
                f"'digits' are {'x'.join(map(str, DIGITS_SHAPE))} images, for the embedded vbp_digits_vit, and "
                f"{model_name(model) or 'this model'} takes {'x'.join(map(str, shape))}: give --data DIR (an image "
                "folder) or 'synthetic'"
            )


def first_input_shape(spec: str, model: nn.Module, skip_bad: bool = False) -> tuple[int, ...]:
    """The shape of the first (readable) input of the data `spec`, without the batch dimension: the input size
    of a model that does not declare one."""
    data = dataset(spec, model, num_images=1, skip_bad=skip_bad)
    for i in range(len(data)):
        inputs = data[i][0]
        if inputs is not None:
            return tuple(inputs.shape)
    raise VbpError(f"no image of {spec} could be read; check the data folder")


def loader(data: Dataset, batch_size: int) -> DataLoader:
    """Batches in a fixed order (no shuffling): calibration and evaluation are then repeatable."""
    if batch_size < 1:
        raise VbpError(f"batch size must be at least 1, got {batch_size}")
    if len(data) == 0:
        raise VbpError("the data set is empty; give data with at least one input")
    return DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=loader_workers(data), collate_fn=collate_for(data)
    )


def collate_for(data: Dataset):
    """How a list of `data`'s items becomes a batch: sentences are tokenized, images stacked (unreadable left out)."""
    base = _base(data)
    return Tokenize(base.tokenizer) if isinstance(base, Sentences) else skip_unreadable


def _base(data: Dataset) -> Dataset:
    while isinstance(data, Subset):
        data = data.dataset
    return data


def loader_workers(data: Dataset) -> int:
    """Worker processes for decoding images; in-memory tensors and sentences need none."""
    return 0 if isinstance(_base(data), (TensorDataset, Sentences)) else min(4, os.cpu_count() or 1)
