"""Measure models: top-k accuracy on labelled data, and latency of one batch."""

from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_sum
from ..errors import VbpError
from ..models import model_device


def retention(value: float, reference: float) -> float | None:
    """value as a percentage of reference (100 * value / reference); None when the reference is 0, where a
    retention means nothing (a model that gets nothing right)."""
    return 100 * value / reference if reference else None


@torch.inference_mode()
def accuracy(
    model: nn.Module, data: Iterable, topk: tuple[int, ...] = (1, 5), progress: bool = True
) -> dict[str, float]:
    """Top-k accuracy in percent, e.g. {"top1": 97.2, "top5": 100.0}, over (images, labels) batches.

    Under torch.distributed each rank passes its shard of the data and the counts are summed over the ranks.
    """
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
    total, *hits = all_reduce_sum([total, *(correct[k] for k in topk)])
    if total == 0:
        raise VbpError("the evaluation data yielded no images")
    return {f"top{k}": 100.0 * n / total for k, n in zip(topk, hits)}


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
