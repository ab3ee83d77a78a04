"""What the per-neuron moments and the covariances share: Chan et al.'s combination of two disjoint sets of
samples, and the row chunks a large [N, C] batch is reduced in (bounded float64 copies whatever the batch)."""

from typing import Callable, Iterator

import torch

from .errors import VbpError

# Rows of a batch reduced at once: bounds the float64 copy to ~128 MB whatever the batch size.
CHUNK_ELEMENTS = 1 << 24


def row_chunks(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """x [N, C] floating, in chunks of whole rows of at most CHUNK_ELEMENTS elements."""
    if x.dim() != 2 or not x.is_floating_point():
        raise VbpError(f"expected a floating [N, C] tensor, got {x.dtype} of shape {tuple(x.shape)}")
    return iter(x.split(max(1, CHUNK_ELEMENTS // max(1, x.shape[1]))))


def chan_merge(
    count_a: int,
    mean_a: torch.Tensor,
    spread_a: torch.Tensor,
    count_b: int,
    mean_b: torch.Tensor,
    spread_b: torch.Tensor,
    cross: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean [C], spread) of the union of two sets: spread is the sum of squared deviations from the mean
    ([C], cross = square) or of their outer products ([C, C], cross = outer(d, d))."""
    n = count_a + count_b
    if n == 0:
        return 0, mean_a, spread_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / n)
    return n, mean, spread_a + spread_b + cross(delta) * (count_a * count_b / n)
