"""Data for calibration and evaluation: a folder of images, the embedded digits, or synthetic images."""

import os

import timm.data
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .digits import digits_split
from .errors import VbpError


def synthetic(input_size: tuple[int, ...], num_images: int, seed: int = 0) -> TensorDataset:
    """Random normal images [num_images, *input_size] with label 0: exercises an architecture, not accuracy."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(num_images, *input_size, generator=g), torch.zeros(num_images, dtype=torch.int64))


def image_folder(path: str | os.PathLike, model: nn.Module, training: bool = False) -> Dataset:
    """An ImageFolder (one sub-folder per class) with timm's evaluation (or, with `training`, training)
    transforms for `model`."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise VbpError(f"data folder {path} does not exist; give an ImageFolder directory, 'digits' or 'synthetic'")
    config = timm.data.resolve_data_config(model=model)
    try:
        return ImageFolder(str(path), transform=timm.data.create_transform(**config, is_training=training))
    except (FileNotFoundError, RuntimeError) as exc:
        raise VbpError(f"no images found in {path}: {exc}") from exc


def dataset(
    spec: str, model: nn.Module, split: str = "train", num_images: int | None = None, training: bool = False
) -> Dataset:
    """The data set named by `spec`: "digits" (its `split`), "synthetic" (`num_images` random images), or a
    folder (read with training transforms when `training`)."""
    if spec == "digits":
        return digits_split(split)
    if spec == "synthetic":
        return synthetic(tuple(model.pretrained_cfg["input_size"]), num_images or 1)
    return image_folder(spec, model, training)


def loader(data: Dataset, batch_size: int) -> DataLoader:
    """Batches in a fixed order (no shuffling): calibration and evaluation are then repeatable."""
    if batch_size < 1:
        raise VbpError(f"batch size must be at least 1, got {batch_size}")
    if len(data) == 0:
        raise VbpError("the data set is empty; give data with at least one image")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=loader_workers(data))


def loader_workers(data: Dataset) -> int:
    """Worker processes for decoding images; in-memory tensors need none."""
    while isinstance(data, Subset):
        data = data.dataset
    return 0 if isinstance(data, TensorDataset) else min(4, os.cpu_count() or 1)
