"""Latency measured fairly: implementations timed in turn, one call each per round, medians of the rounds."""

import statistics
import time
from collections.abc import Mapping
from functools import partial
from typing import Callable

import torch
from torch import nn


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Median seconds of each no-argument callable, after one warm-up call each.

    The callables run once each in turn per round, so that a machine whose speed drifts during the run slows
    all of them alike (timing each in a block of its own would bias their ratio). `sync` waits for queued
    device work (torch.cuda.synchronize on CUDA).
    """
    return {name: statistics.median(t) for name, t in interleaved_times(fns, rounds, sync).items()}


def spread(times: list[float]) -> float | None:
    """How much timed rounds disagree: their median absolute deviation over their median (0.1: a typical round
    is 10% off the median; one outlier among three or more rounds does not count). None for a single round."""
    if len(times) < 2:
        return None
    median = statistics.median(times)
    return statistics.median(abs(t - median) for t in times) / median if median > 0 else 0.0


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """The seconds of every round of each callable, timed as `interleaved_medians` does."""
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
    return times


@torch.inference_mode()
def latencies(
    models: dict[str, nn.Module], inputs: torch.Tensor | Mapping[str, torch.Tensor], rounds: int = 7
) -> dict[str, float]:
    """Median seconds of model(inputs) (a batch of images, or a tokenizer's output as keyword arguments, already
    on the models' device) for each model (eval mode), timed in turn: see `interleaved_medians`."""
    for model in models.values():
        model.eval()
    tensors = list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]
    sync = torch.cuda.synchronize if any(t.is_cuda for t in tensors) else lambda: None
    calls = {
        name: partial(model, **inputs) if isinstance(inputs, Mapping) else partial(model, inputs)
        for name, model in models.items()
    }
    return interleaved_medians(calls, rounds, sync)
