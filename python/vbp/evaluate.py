"""Measure a model: top-k accuracy on labelled data, and latency of one batch."""

import logging
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import VbpError
from .models import model_device


@torch.inference_mode()
def accuracy(
    model: nn.Module, data: Iterable, topk: tuple[int, ...] = (1, 5), progress: bool = True
) -> dict[str, float]:
    """Top-k accuracy in percent, e.g. {"top1": 97.2, "top5": 100.0}, over (images, labels) batches."""
    model.eval()
    device = model_device(model)
    correct = {k: 0 for k in topk}
    total = 0
    for images, labels in tqdm(data, desc="evaluate", unit="batch", disable=not progress):
        logits = model(images.to(device))
        labels = labels.to(device)
        ranked = logits.topk(min(max(topk), logits.shape[-1]), dim=-1).indices
        for k in topk:
            correct[k] += (ranked[:, :k] == labels[:, None]).any(dim=-1).sum().item()
        total += labels.numel()
    if total == 0:
        raise VbpError("the evaluation data yielded no images")
    return {f"top{k}": 100.0 * correct[k] / total for k in topk}


def latency_images(data: Iterable, size: int, device: torch.device | str) -> torch.Tensor:
    """A batch of `size` images [size, C, H, W] for latency runs: the images of `data`'s batches, cycled."""
    if size < 1:
        raise VbpError(f"the latency batch must hold at least one image, got {size}")
    taken, count = [], 0
    for images, _ in data:
        taken.append(images)
        count += len(images)
        if count >= size:
            break
    if count == 0:
        raise VbpError("the evaluation data yielded no images")
    pool = torch.cat(taken)
    return pool.repeat(-(-size // len(pool)), *([1] * (pool.dim() - 1)))[:size].to(device)


@torch.inference_mode()
def latency(model: nn.Module, images: torch.Tensor, min_run_time: float = 1.0) -> float:
    """Median wall time in seconds of model(images), by torch.utils.benchmark (warm-up and syncs included)."""
    # torch.utils.benchmark imports cpp_extension, which logs a CUDA_HOME warning on machines without CUDA.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    model.eval()
    timer = benchmark.Timer(
        stmt="model(images)", globals={"model": model, "images": images}, num_threads=torch.get_num_threads()
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median
