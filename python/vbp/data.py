"""Data for calibration and evaluation: a folder of images, a text file of sentences, the embedded digits,
or synthetic inputs."""

import os
from pathlib import Path

import timm.data
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .count import example_input
from .digits import digits_split
from .errors import VbpError
from .families import hf
from .text import Sentences, Tokenize, read_sentences, tokenizer_of


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


class ImageReader:
    """Open an image file as RGB; an unreadable file is a VbpError naming it, or with `skip`, None (left out of
    its batch by `skip_unreadable`)."""

    def __init__(self, skip: bool = False):
        self.skip = skip

    def __call__(self, path: str):
        from PIL import Image

        try:
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
        except (OSError, ValueError) as exc:
            if self.skip:
                return None
            raise VbpError(f"cannot read the image {path} ({exc}); remove or replace it, or pass --skip-bad-images")


class FlatImages(Dataset):
    """Every image file directly in a folder, with label 0: calibration data needs no classes."""

    def __init__(self, path: str, transform, reader: ImageReader):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.files = sorted(str(p) for p in Path(path).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        self.transform, self.reader = transform, reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = self.reader(self.files[i])
        return (None, 0) if image is None else (self.transform(image), 0)


class _TransformUnlessSkipped:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return None if image is None else self.transform(image)


def skip_unreadable(batch: list):
    """collate_fn: the default collation of the items whose image could be read."""
    from torch.utils.data import default_collate

    kept = [item for item in batch if item[0] is not None]
    if not kept:
        raise VbpError("a whole batch of images was unreadable (--skip-bad-images); check the data folder")
    return default_collate(kept)


def image_folder(path: str | os.PathLike, model: nn.Module, training: bool = False, skip_bad: bool = False) -> Dataset:
    """An ImageFolder (one sub-folder per class), or a flat folder of images (label 0), with timm's evaluation
    (or, with `training`, training) transforms for `model`. skip_bad: leave unreadable images out."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise VbpError(
            f"data {path} does not exist; give an ImageFolder directory, a .txt file of sentences, 'digits' or "
            "'synthetic'"
        )
    transform, reader = _image_transform(model, training), ImageReader(skip_bad)
    if not any(p.is_dir() for p in Path(path).iterdir()):
        data = FlatImages(str(path), transform, reader)
        if not len(data):
            raise VbpError(f"no images found in {path}: give image files, or one sub-folder of images per class")
        return data
    try:
        return ImageFolder(str(path), transform=_TransformUnlessSkipped(transform), loader=reader)
    except (FileNotFoundError, RuntimeError) as exc:
        raise VbpError(f"no images found in {path}: {exc}") from exc


def _image_transform(model: nn.Module, training: bool):
    """A Hugging Face model's image processor; else timm's evaluation (or training) transforms for `model`."""
    if hf.owns(model):
        from transformers import AutoImageProcessor

        path = model.config._name_or_path
        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise VbpError(f"cannot load the image processor of {path}: {exc}") from exc
        return ImageProcessorTransform(processor)
    config = timm.data.resolve_data_config(model=model)
    return timm.data.create_transform(**config, is_training=training)


class ImageProcessorTransform:
    """A PIL image -> the processor's pixel_values [C, H, W]."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


def dataset(
    spec: str,
    model: nn.Module,
    split: str = "train",
    num_images: int | None = None,
    training: bool = False,
    skip_bad: bool = False,
) -> Dataset:
    """The data set named by `spec`: "digits" (its `split`), "synthetic" (`num_images` random inputs), a .txt
    file of sentences (tokenized by the model's tokenizer), or an image folder (read with training transforms
    when `training`)."""
    if spec == "digits":
        return digits_split(split)
    if spec == "synthetic":
        return synthetic(model, num_images or 1)
    if os.path.isfile(spec):
        if not spec.endswith(".txt"):
            raise VbpError(f"{spec} is a file but not a .txt file of sentences; give a .txt file or an image folder")
        return Sentences(read_sentences(spec), tokenizer_of(model))
    return image_folder(spec, model, training, skip_bad)


def loader(data: Dataset, batch_size: int) -> DataLoader:
    """Batches in a fixed order (no shuffling): calibration and evaluation are then repeatable."""
    if batch_size < 1:
        raise VbpError(f"batch size must be at least 1, got {batch_size}")
    if len(data) == 0:
        raise VbpError("the data set is empty; give data with at least one input")
    base = _base(data)
    collate = Tokenize(base.tokenizer) if isinstance(base, Sentences) else skip_unreadable
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=loader_workers(data), collate_fn=collate)


def _base(data: Dataset) -> Dataset:
    while isinstance(data, Subset):
        data = data.dataset
    return data


def loader_workers(data: Dataset) -> int:
    """Worker processes for decoding images; in-memory tensors and sentences need none."""
    return 0 if isinstance(_base(data), (TensorDataset, Sentences)) else min(4, os.cpu_count() or 1)
