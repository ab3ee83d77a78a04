"""How one MLP site's hidden values reach its running statistics during calibration.

A SiteRecorder owns a site's running Moments (and optional Reservoir) and checks every update for
NaN/Inf. It is attached to the model by one of two backends:
- "torch": a forward pre-hook on the site's consumer (fc2) reduces its input, the hidden value, with a
  float64 two-pass. This works for every family, gated products act(gate) * up included.
- "triton": where the site's activation is a GELU module, it is swapped for one fused Triton kernel
  (vbp_kernels) that reads the pre-activation once, writes GELU(x) and reduces it on the way; other sites
  keep the hook and reduce the hidden value with the same kernel.
Padded batches: `mask` ([B, T] bool, True for real tokens) is set per batch; only those rows are samples.
"""

import os
from dataclasses import dataclass

import torch
from torch import nn

from .activations import gelu_kind
from .covariance import CoMoments
from .errors import VbpError
from .reservoir import Reservoir
from .sites import MlpSite, hidden_channels_last, set_submodule
from .stats import Moments

BACKENDS = ("auto", "triton", "torch")


class SiteRecorder:
    """Running statistics of one site; `update` folds in one batch.

    nonfinite="error": a batch with NaN/Inf raises VbpError naming the site and batch; on CPU at once,
    leaving the state as it was, on CUDA at `finish()` so no batch forces a host sync.
    nonfinite="skip": such a batch is left out and counted in `skipped` (one host sync per batch on CUDA).
    """

    def __init__(
        self,
        site: MlpSite,
        moments: Moments,
        reservoir: Reservoir | None,
        nonfinite: str,
        covariance: CoMoments | None = None,
    ):
        self.site = site
        self.moments = moments
        self.covariance = covariance
        self.reservoir = reservoir
        self.nonfinite = nonfinite
        self.batch = 0
        self.skipped = 0
        self.mask: torch.Tensor | None = None
        self.pre: torch.Tensor | None = None  # the last pre-activation (fc1 / gate output), for the reservoir
        self._deferred: list[tuple[int, torch.Tensor]] = []

    def samples(self, h: torch.Tensor) -> torch.Tensor:
        """The hidden value as [N, C] rows, padding rows left out."""
        dim = self.site.channel_dim
        if self.mask is None:
            return hidden_channels_last(h.detach(), dim)
        if h.dim() != 3 or h.shape[:2] != self.mask.shape:
            raise VbpError(
                f"the attention mask has shape {tuple(self.mask.shape)} but site '{self.site.name}' sees a hidden "
                f"value of shape {tuple(h.shape)}; padding can only be left out of [batch, tokens, C] values"
            )
        return h.detach()[self.mask]

    def update(
        self, update: Moments, pre: torch.Tensor | None, post: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """Fold in one batch's moments; pre/post: the pre-activation and hidden value (for the covariance and the
        reservoir); rows: `samples(post)` where the caller has it already."""
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
        keep_sample = self.reservoir is not None and pre is not None
        if rows is None and (self.covariance is not None or keep_sample):
            rows = self.samples(post)
        if self.covariance is not None:  # shifted by the running mean, close to this batch's
            shift = self.covariance.mean if self.covariance.count else None
            self.covariance = self.covariance.merge(CoMoments.of(rows, shift))
        if keep_sample:
            self.reservoir.add(self.samples(pre), rows)

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

    model: nn.Module
    path: str
    act: nn.Module

    def remove(self) -> None:
        set_submodule(self.model, self.path, self.act)


class _Handles:
    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _FusedActivation(nn.Module):
    """Stands in for a GELU during calibration: GELU(x) and its statistics from one Triton kernel."""

    def __init__(self, recorder: SiteRecorder, activation: str):
        super().__init__()
        self.recorder = recorder
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from vbp_kernels import activation_moments

        r = self.recorder
        dim = r.site.channel_dim
        y, count, mean, m2 = activation_moments(x, self.activation, dim, write_output=True)
        rows = None
        if r.mask is not None:  # padding: reduce the real tokens' rows of the output instead
            rows = r.samples(y)
            _, count, mean, m2 = activation_moments(rows, "none", -1)
        r.update(Moments(count, mean, m2), x, y, rows)
        return y


def _torch_reduce(recorder: SiteRecorder, h: torch.Tensor) -> tuple[Moments, torch.Tensor]:
    """(moments, the [N, C] rows they were reduced from)."""
    rows = recorder.samples(h)
    return Moments.of(rows), rows


def _triton_reduce(recorder: SiteRecorder, h: torch.Tensor) -> tuple[Moments, torch.Tensor | None]:
    """(moments, the [N, C] rows when padding made them; None when the kernel read `h` in place)."""
    from vbp_kernels import activation_moments

    if recorder.mask is not None:
        rows = recorder.samples(h)
        _, count, mean, m2 = activation_moments(rows, "none", -1)
        return Moments(count, mean, m2), rows
    _, count, mean, m2 = activation_moments(h.detach(), "none", recorder.site.channel_dim)  # NCHW read in place
    return Moments(count, mean, m2), None


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
    site = recorder.site
    act = site.activation
    if backend == "triton" and not site.gated and gelu_kind(act) is not None:
        set_submodule(site.model, site.act, _FusedActivation(recorder, gelu_kind(act)))
        return _Swap(site.model, site.act, act)
    reduce = _triton_reduce if backend == "triton" else _torch_reduce

    def observe(hidden: torch.Tensor) -> None:
        moments, rows = reduce(recorder, hidden)
        recorder.update(moments, recorder.pre, hidden, rows)

    handles = [site.observe(observe)]
    if recorder.reservoir is not None:

        def keep_pre(module, inputs, output):
            recorder.pre = output

        handles.append(site.producer_layers[0].register_forward_hook(keep_pre))
    return _Handles(*handles)
