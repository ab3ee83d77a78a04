"""torch.distributed set-up for commands launched by torchrun (one process per device)."""

import os

import torch
import torch.distributed as dist


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


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
