"""Run a model over calibration data and gather per-neuron post-activation statistics of every MLP site."""

from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import VbpError
from .models import model_device, model_name
from .reservoir import Reservoir
from .sites import MlpSite, find_sites, hidden_channels_last
from .stats import Moments, Stats


def _images(batch) -> torch.Tensor:
    """A batch is an image tensor or a (images, labels, ...) tuple/list."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class _SiteRecorder:
    """Forward hook on one site's activation: folds each hidden tensor into the site's running Moments.

    On CPU a non-finite batch raises at once and leaves the running state as it was; on CUDA the
    check is deferred to the end of calibration so no batch forces a host sync.
    """

    def __init__(self, site: MlpSite, device: torch.device, reservoir: Reservoir | None):
        self.site = site
        self.moments = Moments.zeros(site.width, device)
        self.reservoir = reservoir
        self.batch = 0
        self.deferred_checks: list[tuple[int, torch.Tensor]] = []

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        post = hidden_channels_last(output.detach(), self.site.channel_dim)
        update = Moments.of(post)
        finite = update.is_finite()
        if output.device.type == "cuda":
            self.deferred_checks.append((self.batch, finite))
        elif not finite:
            self.fail(self.batch)
        self.moments = self.moments.merge(update)
        if self.reservoir is not None:
            self.reservoir.add(hidden_channels_last(inputs[0].detach(), self.site.channel_dim), post)

    def fail(self, batch: int) -> None:
        raise VbpError(
            f"non-finite activations (NaN or Inf) at MLP site '{self.site.name}' in calibration batch {batch}; "
            "check the model weights and the input data"
        )

    def check_deferred(self) -> None:
        if self.deferred_checks:
            ok = torch.stack([f for _, f in self.deferred_checks]).cpu()
            if not ok.all():
                self.fail(self.deferred_checks[int((~ok).nonzero()[0])][0])


@torch.inference_mode()
def calibrate(
    model: nn.Module,
    data: Iterable,
    num_batches: int | None = None,
    num_samples: int | None = None,
    progress: bool = True,
    name: str | None = None,
    samples: int = 0,
) -> Stats:
    """Statistics of every MLP site's post-activation values over `data`.

    model: a timm model with MLP sites (see `find_sites`); run in eval mode on its own device.
    data: iterable of image batches [B, C, H, W], or (images, labels) pairs.
    num_batches / num_samples: stop after this many batches / images (the last batch is trimmed).
    name: model name stored in the statistics (default: the timm architecture name).
    samples: keep a uniform sample of this many rows of pre- and post-activation values per site
        (`Stats.samples`), for activation histograms.
    Every token (ViT, Swin) or spatial position (ConvNeXt) of every image is one sample per neuron.
    """
    for limit, what in ((num_batches, "num_batches"), (num_samples, "num_samples")):
        if limit is not None and limit < 1:
            raise VbpError(f"{what} must be at least 1, got {limit}")
    device = model_device(model)
    recorders = [_SiteRecorder(site, device, Reservoir(samples, seed=i) if samples else None)
                 for i, site in enumerate(find_sites(model))]
    hooks = [r.site.act.register_forward_hook(r) for r in recorders]
    was_training = model.training
    model.eval()
    seen_batches = seen_samples = 0
    total = num_batches if num_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    try:
        for batch in tqdm(data, total=total, desc="calibrate", unit="batch", disable=not progress):
            images = _images(batch)
            if num_samples is not None:
                images = images[: num_samples - seen_samples]
            if images.shape[0] == 0:
                continue
            for r in recorders:
                r.batch = seen_batches
            model(images.to(device, non_blocking=True))
            seen_batches += 1
            seen_samples += images.shape[0]
            if seen_batches == num_batches or seen_samples == num_samples:
                break
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen_batches == 0:
        raise VbpError("the calibration data yielded no images; give a data set with at least one image")
    for r in recorders:
        r.check_deferred()
    sampled = {r.site.name: {"pre": r.reservoir.pre.cpu(), "post": r.reservoir.post.cpu()}
               for r in recorders if r.reservoir is not None}
    return Stats(name if name is not None else model_name(model), {r.site.name: r.moments for r in recorders},
                 sampled or None)
