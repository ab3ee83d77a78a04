"""The device a caller names, checked before any work: a clear error for a name that does not parse or a device
this machine lacks, instead of a traceback from deep inside torch."""

import torch

from .errors import VbpError


def check_device(device: "torch.device | str") -> torch.device:
    """`device` as a torch.device; a VbpError when it is not a device name, or a CUDA device that is not here."""
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise VbpError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise VbpError(
            f"device {str(device)!r}: no such CUDA device here ({torch.cuda.device_count()} visible); use device='cpu'"
        )
    return parsed
