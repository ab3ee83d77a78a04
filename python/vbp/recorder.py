"""How one MLP site's activations reach its running statistics during calibration.

A SiteRecorder owns a site's running Moments (and optional Reservoir) and checks every update for
NaN/Inf. It is attached to the model by one of two backends:
- "torch": a forward hook on the activation module reduces its output with a float64 two-pass.
- "triton": the activation module is swapped for one fused Triton kernel (vbp_kernels) that reads the
  pre-activation once, writes GELU(x) and reduces it on the way; activations other than GELU keep the
  hook and reduce their output with the same kernel.
"""

import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import VbpError
from .reservoir import Reservoir
from .sites import MlpSite, gelu_kind, hidden_channels_last
from .stats import Moments

BACKENDS = ("auto", "triton", "torch")


class SiteRecorder:
    """Running statistics of one site; `update` folds in one batch.

    nonfinite="error": a batch with NaN/Inf raises VbpError naming the site and batch; on CPU at once,
    leaving the state as it was, on CUDA at `finish()` so no batch forces a host sync.
    nonfinite="skip": such a batch is left out and counted in `skipped` (one host sync per batch on CUDA).
    """

    def __init__(self, site: MlpSite, moments: Moments, reservoir: Reservoir | None, nonfinite: str):
        self.site = site
        self.moments = moments
        self.reservoir = reservoir
        self.nonfinite = nonfinite
        self.batch = 0
        self.skipped = 0
        self._deferred: list[tuple[int, torch.Tensor]] = []

    def update(self, update: Moments, pre: torch.Tensor, post: torch.Tensor) -> None:
        """Fold in one batch's moments; pre/post are the activation's input and output (for the reservoir)."""
        finite = update.is_finite()
        if self.nonfinite == "skip":
            if not finite:
                self.skipped += 1
                return
        elif post.device.type == "cuda":
            self._deferred.append((self.batch, finite))
        elif not finite:
            self._fail(self.batch)
        self.moments = self.moments.merge(update)
        if self.reservoir is not None:
            dim = self.site.channel_dim
            self.reservoir.add(hidden_channels_last(pre.detach(), dim), hidden_channels_last(post.detach(), dim))

    def finish(self) -> None:
        """Raise for any deferred non-finite batch (one host sync for the whole calibration)."""
        if self._deferred:
            ok = torch.stack([f for _, f in self._deferred]).cpu()
            if not ok.all():
                self._fail(self._deferred[int((~ok).nonzero()[0])][0])

    def _fail(self, batch: int) -> None:
        raise VbpError(
            f"non-finite activations (NaN or Inf) at MLP site '{self.site.name}' in calibration batch {batch}; "
            "check the model weights and the input data, or skip such batches (nonfinite='skip', --skip-nonfinite)"
        )


@dataclass
class _Swap:
    """Undo handle for a replaced activation module."""

    block: nn.Module
    act: nn.Module

    def remove(self) -> None:
        self.block.act = self.act


class _FusedActivation(nn.Module):
    """Stands in for a GELU during calibration: GELU(x) and its statistics from one Triton kernel."""

    def __init__(self, recorder: SiteRecorder, activation: str):
        super().__init__()
        self.recorder = recorder
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from vbp_kernels import activation_moments

        y, count, mean, m2 = activation_moments(x, self.activation, self.recorder.site.channel_dim, write_output=True)
        self.recorder.update(Moments(count, mean, m2), x, y)
        return y


def _torch_hook(recorder: SiteRecorder):
    def hook(module, inputs, output):
        update = Moments.of(hidden_channels_last(output.detach(), recorder.site.channel_dim))
        recorder.update(update, inputs[0], output)

    return hook


def _triton_hook(recorder: SiteRecorder):
    def hook(module, inputs, output):
        from vbp_kernels import activation_moments

        _, count, mean, m2 = activation_moments(output.detach(), "none", recorder.site.channel_dim)
        recorder.update(Moments(count, mean, m2), inputs[0], output)

    return hook


def resolve_backend(backend: str, device: torch.device) -> str:
    """ "auto" -> "triton" on CUDA, "torch" elsewhere; "triton" on CPU needs TRITON_INTERPRET=1."""
    if backend not in BACKENDS:
        raise VbpError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise VbpError(
            "the triton backend needs a CUDA device (or TRITON_INTERPRET=1 to interpret it on CPU); "
            "use backend='torch' on CPU"
        )
    return backend


def attach(recorder: SiteRecorder, backend: str):
    """Connect a recorder to its site with a resolved backend; returns a handle with .remove()."""
    act = recorder.site.act
    if backend == "triton" and gelu_kind(act) is not None:
        recorder.site.block.act = _FusedActivation(recorder, gelu_kind(act))
        return _Swap(recorder.site.block, act)
    return act.register_forward_hook(_triton_hook(recorder) if backend == "triton" else _torch_hook(recorder))
