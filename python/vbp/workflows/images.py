"""Image folders as data sets: an ImageFolder (one sub-folder per class) or a flat folder of images, read with
the model's own transforms (an HF model's image processor, else timm's), unreadable images named or left out."""

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from ..errors import VbpError
from ..families import hf
from .unreadable import unreadable_flags


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
        self.unreadable = unreadable_flags(path, len(self.files)) if reader.skip else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = self.reader(self.files[i])
        if image is None:
            self.unreadable[i] = True
            return None, 0
        return self.transform(image), 0


class Folder(ImageFolder):
    """torchvision's ImageFolder that, reading with a skipping ImageReader, marks the images it could not read."""

    def __init__(self, path: str, transform, reader: ImageReader):
        super().__init__(path, transform=transform, loader=reader)
        self.unreadable = unreadable_flags(path, len(self.samples)) if reader.skip else None

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        image = self.loader(path)
        if image is None:
            self.unreadable[i] = True
            return None, target
        return self.transform(image), target


def image_folder(path: str | os.PathLike, model: nn.Module, training: bool = False, skip_bad: bool = False) -> Dataset:
    """An ImageFolder (one sub-folder per class), or a flat folder of images (label 0), with timm's evaluation
    (or, with `training`, training) transforms for `model`. skip_bad: leave unreadable images out (counted in
    `unreadable_report`)."""
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
        return Folder(str(path), transform, reader)
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
    import timm.data

    from ..families import timm_models

    # a timm model created with another img_size than its pretrained config's takes images of its own size
    size = {"input_size": timm_models.input_size(model)} if timm_models.owns(model) else None
    config = timm.data.resolve_data_config(size, model=model)
    return timm.data.create_transform(**config, is_training=training)


class ImageProcessorTransform:
    """A PIL image -> the processor's pixel_values [C, H, W]."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]
