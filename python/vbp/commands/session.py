"""The torch.distributed set-up and tear-down every command that may run under torchrun shares."""

import contextlib
from typing import Iterator

from ..distributed import barrier, init_from_env, rank_and_world, shutdown


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[tuple[str, int, int]]:
    """Join torchrun's process group (a no-op outside torchrun); yields (this process's device, rank, world
    size) and leaves the group however the block ends. Rank and world stay valid after the block."""
    from .options import check_device

    device = init_from_env(check_device(device))
    rank, world = rank_and_world()
    try:
        yield device, rank, world
        # every rank done with its collectives before any tears the group down (gloo aborts a process whose
        # group goes while its worker threads still hold work)
        barrier()
    finally:
        shutdown()
