"""Images left out by --skip-bad-images: one flag per image of each folder read, in shared memory so that the
loader's worker processes set them; data sets over one folder share its flags, so an image counts once."""

import os

import torch

from ..errors import VbpError

_UNREADABLE: dict[tuple[str, int], torch.Tensor] = {}


def unreadable_flags(path: str | os.PathLike, n: int) -> torch.Tensor:
    key = (os.path.realpath(path), n)
    if key not in _UNREADABLE:
        _UNREADABLE[key] = torch.zeros(n, dtype=torch.bool).share_memory_()
    return _UNREADABLE[key]


def unreadable_report() -> str | None:
    """One line: how many images the data sets made with skip_bad have left out (None when none was made);
    forgets them."""
    counts = {folder: int(flags.sum()) for (folder, _), flags in _UNREADABLE.items()}
    _UNREADABLE.clear()
    if not counts:
        return None
    where = ", ".join(f"{n} in {folder}" for folder, n in counts.items() if n)
    return f"--skip-bad-images left out {sum(counts.values())} unreadable images" + (f" ({where})" if where else "")


def skip_unreadable(batch: list):
    """collate_fn: the default collation of the items whose image could be read."""
    from torch.utils.data import default_collate

    kept = [item for item in batch if item[0] is not None]
    if not kept:
        raise VbpError("a whole batch of images was unreadable (--skip-bad-images); check the data folder")
    return default_collate(kept)
