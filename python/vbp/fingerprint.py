"""The identity of a model's weights: a hash of every parameter and buffer, names, dtypes and shapes included.

Statistics and partial calibrations record it, so that statistics gathered on other weights (another
checkpoint, another random initialisation) are refused instead of silently pruning by the wrong neurons.
"""

import hashlib

import torch
from torch import nn


def weights_fingerprint(model: nn.Module) -> str:
    """32 hex digits (BLAKE2b) over the model's state dict in name order; equal weights give equal digits."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()
