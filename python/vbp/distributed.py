"""torch.distributed for commands launched by torchrun (one process per device): set-up, sharding, and
the merge of per-rank statistics."""

import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from .stats import Stats


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.

    Returns the device this process uses: cuda:LOCAL_RANK on CUDA, else `device`. A no-op outside torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return device


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op outside torch.distributed)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(data: Dataset) -> Dataset:
    """This rank's share of `data`: items rank, rank + world, ... Unlike DistributedSampler it never pads
    with repeated items, so statistics merged over the ranks are those of the data set itself."""
    rank, world = rank_and_world()
    return data if world == 1 else Subset(data, range(rank, len(data), world))


def _collective_device(default: torch.device | str) -> torch.device | str:
    """Where a tensor must be for the process group's collectives: this rank's GPU under NCCL, else `default`."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else default


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64); `values` itself outside torch.distributed."""
    _, world = rank_and_world()
    if world == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device("cpu"))
    dist.all_reduce(total)
    return total.tolist()


def all_gather_stats(stats: Stats) -> Stats:
    """Every rank's statistics merged (Chan's formula, in rank order): all ranks return the same result.

    Sent as `Stats.to_tensors` gives them (the files' serialisation): metadata as objects, tensors as one
    float64 vector. Outside torch.distributed, `stats` itself. Activation samples stay those of the local rank.
    """
    _, world = rank_and_world()
    if world == 1:
        return stats
    local = replace(stats, samples=None)
    tensors, meta = local.to_tensors()
    names = sorted(tensors)
    home = next(iter(tensors.values())).device
    flat = torch.cat([tensors[n].double().flatten() for n in names]).to(_collective_device(home))
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    metas = [None] * world
    dist.all_gather_object(metas, meta)
    merged = None
    for vec, rank_meta in zip(gathered, metas):
        pieces = vec.to(home).split([tensors[n].numel() for n in names])
        rank_tensors = {n: p.view_as(tensors[n]).clone() for n, p in zip(names, pieces)}
        part = Stats.from_tensors(rank_tensors, rank_meta, source="statistics from another rank")
        merged = part if merged is None else merged.merge(part)
    return replace(merged, samples=stats.samples)
