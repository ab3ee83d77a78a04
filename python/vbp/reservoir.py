"""A small uniform sample of a site's activations, kept during calibration for histograms (paper Figs. 7-8).

Every row (token or position) gets a random key; the reservoir keeps the k rows with the smallest keys
seen so far, which is a uniform sample without replacement of all rows, whatever the batch sizes.
"""

import torch


class Reservoir:
    """Up to k sampled rows of pre-activation and post-activation values, each [k, C] float32."""

    def __init__(self, k: int, seed: int = 0):
        self.k = k
        self.seed = seed
        self.keys: torch.Tensor | None = None
        self.pre: torch.Tensor | None = None
        self.post: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    def add(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        """Offer rows pre [N, C] and post [N, C] (the same rows before and after the activation)."""
        if self._generator is None:
            self._generator = torch.Generator(device=pre.device).manual_seed(self.seed)
        keys = torch.rand(pre.shape[0], generator=self._generator, device=pre.device)
        pre, post = pre.float(), post.float()
        if self.keys is not None:
            keys = torch.cat([self.keys, keys])
            pre, post = torch.cat([self.pre, pre]), torch.cat([self.post, post])
        kept = torch.topk(keys, min(self.k, keys.numel()), largest=False).indices
        self.keys, self.pre, self.post = keys[kept], pre[kept], post[kept]
