"""Measure models: top-k accuracy on labelled data, and latency of one batch."""

import statistics
import time
from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .distributed import all_reduce_sum
from .errors import VbpError
from .models import model_device


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


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds of each no-argument callable, after one warm-up call each.

    The callables run once each in turn per round, so that a machine whose speed drifts during the run slows
    all of them alike (timing each in a block of its own would bias their ratio). `sync` waits for queued
    device work (torch.cuda.synchronize on CUDA).
    """
    for fn in fns.values():
        fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def latencies(models: dict[str, nn.Module], images: torch.Tensor, rounds: int = 7) -> dict[str, float]:
    """Median seconds of model(images) for each model (eval mode), timed in turn: see `interleaved_medians`."""
    for model in models.values():
        model.eval()
    sync = torch.cuda.synchronize if images.is_cuda else lambda: None
    return interleaved_medians({name: partial(model, images) for name, model in models.items()}, rounds, sync)
