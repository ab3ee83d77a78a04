"""Run a model over calibration data and gather per-neuron post-activation statistics of every MLP site."""

import numbers
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import batch_size, first_rows, model_inputs, padding_mask, run_model
from .covariance import CoMoments
from .distributed import all_gather_stats
from .errors import VbpError
from .families import find_sites
from .fingerprint import weights_fingerprint
from .model_ids import canonical_id
from .models import example_input, model_device, model_name
from .recorder import SiteRecorder, attach, resolve_backend
from .reservoir import Reservoir
from .stats import Moments, Stats
from .streams import StreamRecorder, stream_block


def _start_state(
    sites,
    name: str,
    weights: str,
    device,
    checkpoint: Path | None,
    resume: bool,
    covariance: list[str],
    run: dict,
    accept: bool,
) -> Stats:
    """Running statistics: zeros, or the checkpoint's when resuming (refused if `run` differs, unless `accept`,
    and always when the checkpoint was made on other weights: two models' statistics never mix)."""
    if not resume:
        return Stats(
            name,
            {s.name: Moments.zeros(s.width, device) for s in sites},
            covariances={s.name: CoMoments.zeros(s.width, device) for s in sites if s.name in covariance},
            run=run,
            weights=weights,
        )
    if checkpoint is None or not checkpoint.exists():
        raise VbpError(f"nothing to resume: no calibration checkpoint at {checkpoint}")
    saved = Stats.load(checkpoint)
    saved.check_matches(name, {s.name: s.width for s in sites}, what="the model being calibrated")
    if saved.weights and saved.weights != weights:
        raise VbpError(
            f"the checkpoint {checkpoint} was made on other weights than this model's (another checkpoint or random "
            "initialisation): resume with the same weights, or start again without --resume"
        )
    changed = sorted(k for k in run.keys() & saved.run.keys() if run[k] != saved.run[k])
    if changed and not accept:
        raise VbpError(
            f"--resume with other options than the checkpoint {checkpoint} was made with: "
            + ", ".join(f"{k} (now {run[k]!r}, saved {saved.run[k]!r})" for k in changed)
            + "; use the same options, or accept the change (--resume-anyway)"
        )
    if set(saved.covariances) != set(covariance):
        raise VbpError(
            f"the checkpoint {checkpoint} holds covariances of {sorted(saved.covariances) or 'no sites'}, but this run "
            f"asks for {sorted(covariance) or 'none'}; resume with the same covariance option"
        )
    return saved.to(device)


def _stream_recorders(model: nn.Module, sites, blocks: list[str | None], saved: dict[str, Moments], device) -> dict:
    """block name -> StreamRecorder of the residual stream its sites write into (from `saved` when resuming, where
    the checkpoint has them); none unless every site has a block (`vbp.streams`)."""
    if None in blocks:
        return {}
    recorders = {}
    for site, block in zip(sites, blocks):
        width = site.consumer_layer.weight.shape[0]
        recorders.setdefault(block, StreamRecorder(saved.get(site.name, Moments.zeros(1, device)), width))
    return recorders


def _covariance_sites(covariance, sites) -> list[str]:
    """covariance=True / False / site names -> the names of the sites that gather a covariance."""
    names = [s.name for s in sites]
    if covariance is True:
        return names
    if not covariance:
        return []
    unknown = sorted(set(covariance) - set(names))
    if unknown:
        raise VbpError(f"covariance asked for sites {unknown}, which the model does not have; its sites: {names[:4]}...")
    return list(covariance)


@torch.inference_mode()
def _shape_text(inputs, per_input: bool = False) -> str:
    """'2x3x64x64' ('3x64x64' `per_input`), or 'input_ids 2x12, attention_mask 2x12' for a mapping batch."""
    first = 1 if per_input else 0
    shape = lambda t: "x".join(map(str, t.shape[first:])) if isinstance(t, torch.Tensor) else type(t).__name__  # noqa: E731
    return ", ".join(f"{k} {shape(v)}" for k, v in inputs.items()) if isinstance(inputs, dict) else shape(inputs)


def _first_run(model: nn.Module, inputs, device: torch.device) -> None:
    """run_model on the first batch; an input the model cannot take (a timm ViT fed another image size asserts in
    its patch embedding) is a VbpError that names the shapes, not a traceback from inside the model."""
    try:
        run_model(model, inputs, device)
    except (VbpError, torch.cuda.OutOfMemoryError):
        raise
    except (AssertionError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        try:
            takes = f" ({model_name(model) or type(model).__name__} takes {_shape_text(example_input(model), per_input=True)} per input)"
        except Exception:  # a model of no known family: its input is not known either
            takes = ""
        message = " ".join(str(exc).split())[:300].rstrip(".")
        raise VbpError(
            f"the model fails on the first calibration batch, of inputs {_shape_text(inputs)}: "
            f"{type(exc).__name__}: {message}; give batches of the inputs it takes{takes}"
        ) from exc


def calibrate(
    model: nn.Module,
    data: Iterable,
    num_batches: int | None = None,
    num_samples: int | None = None,
    progress: bool = True,
    name: str | None = None,
    samples: int = 0,
    backend: str = "auto",
    nonfinite: str = "error",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    covariance: bool | Iterable[str] = False,
    run: dict | None = None,
    accept_changes: bool = False,
) -> Stats:
    """Statistics of every MLP site's post-activation values over `data`.

    model: a model with MLP sites (see `find_sites`); run in eval mode on its own device.
    data: iterable of batches in a repeatable order: input tensors ([B, C, H, W] images), (inputs, labels)
        pairs, or mappings of the model's keyword arguments (a tokenizer's output). Where a mapping has an
        `attention_mask`, only real tokens are samples: padding does not change the statistics.
    num_batches / num_samples: stop after this many batches / inputs (the last batch is trimmed; inputs of batches
        left out for NaN/Inf do not count).
    name: model name stored in the statistics (default: the model's id, see `vbp.create_model`).
    samples: keep a uniform sample of this many rows of pre- and post-activation values per site
        (`Stats.samples`), for activation histograms.
    backend: "triton" (fused GELU + Welford kernel), "torch" (hooks, float64 two-pass), or "auto" (Triton
        on CUDA, PyTorch elsewhere). Both give the same statistics.
    nonfinite: "error" (NaN/Inf activations raise, naming site and batch) or "skip" (such batches are left
        out per site and counted in `Stats.skipped`).
    checkpoint / checkpoint_every / resume: save the running statistics atomically every K batches to
        `checkpoint`; `resume` continues from it, skipping the batches already done, and ends with the
        statistics of an uninterrupted run.
    run / accept_changes: the options that shape the statistics (data, batch size, weights, ...), recorded in
        the statistics and checkpoints; resuming with other values is refused unless `accept_changes`.
    covariance: also gather each site's C x C covariance of the hidden value (True: every site; or an iterable
        of site names), for affine compensation and the redundancy criterion. Costs one [N, C] x [C, N] GEMM per
        site and batch and C^2 x 8 bytes per site (DeiT-B: 906 MB in all; see `vbp.covariance`).
    Every token (ViT, Swin, text) or spatial position (ConvNeXt) of every input is one sample per neuron. Under
    torch.distributed each rank calibrates its own shard and all ranks end with the merged statistics.
    """
    if not isinstance(model, nn.Module):
        raise VbpError(f"calibrate takes a torch.nn.Module, got {type(model).__name__} (vbp.create_model builds one by id)")
    if data is None or isinstance(data, (str, bytes, torch.Tensor)):
        raise VbpError(
            f"calibrate's data must be an iterable of batches (a DataLoader, or a list of input tensors), got "
            f"{type(data).__name__}" + (": wrap one batch in a list, [tensor]" if isinstance(data, torch.Tensor) else "")
        )
    for limit, what in ((num_batches, "num_batches"), (num_samples, "num_samples")):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)):
            raise VbpError(f"{what} must be a whole number, at least 1, got {limit!r}")
        if limit is not None and limit < 1:
            raise VbpError(f"{what} must be at least 1, got {limit}")
    if nonfinite not in ("error", "skip"):
        raise VbpError(f"nonfinite must be 'error' or 'skip', got '{nonfinite}'")
    if samples and (resume or checkpoint_every):
        raise VbpError("activation samples are not kept in calibration checkpoints; use samples=0 with resume")
    device = model_device(model)
    backend = resolve_backend(backend, device)
    name = canonical_id(name if name is not None else model_name(model))
    weights = weights_fingerprint(model)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    sites = find_sites(model)
    run = dict(run or {})
    start = _start_state(
        sites, name, weights, device, checkpoint, resume, _covariance_sites(covariance, sites), run, accept_changes
    )
    done_batches, done_samples = start.batches, start.inputs
    recorders = [
        SiteRecorder(
            s,
            start.sites[s.name],
            Reservoir(samples, seed=i) if samples else None,
            nonfinite,
            start.covariances.get(s.name),
        )
        for i, s in enumerate(sites)
    ]

    def snapshot() -> Stats:
        return Stats(
            name,
            {r.site.name: r.moments for r in recorders},
            batches=seen_batches,
            inputs=seen_samples,
            skipped={r.site.name: r.skipped for r in recorders},
            covariances={r.site.name: r.covariance for r in recorders if r.covariance is not None},
            run=run,
            weights=weights,
            streams={s.name: streams[b].moments for s, b in zip(sites, blocks) if b in streams and streams[b].moments.count},
        )

    blocks = [stream_block(model, s) for s in sites]
    streams = {} if resume and not start.streams else _stream_recorders(model, sites, blocks, start.streams, device)
    handles = [attach(r, backend) for r in recorders]
    handles += [model.get_submodule(block).register_forward_pre_hook(r.hook, with_kwargs=True) for block, r in streams.items()]
    was_training = model.training
    model.eval()
    seen_batches, seen_samples = done_batches, done_samples
    known = [n for n in (num_batches, len(data) if hasattr(data, "__len__") else None) if n is not None]
    total = min(known, default=None)  # num_batches beyond the data: the bar ends at the data's batches
    try:
        for index, batch in enumerate(tqdm(data, total=total, desc="calibrate", unit="batch", disable=not progress)):
            if index < done_batches:  # already in the resumed state
                continue
            inputs = model_inputs(batch)
            if num_samples is not None:
                inputs = first_rows(inputs, num_samples - seen_samples)
            if batch_size(inputs) == 0:
                continue
            mask = padding_mask(inputs, device)
            for r in recorders:
                r.batch, r.mask = seen_batches, mask
            for r in streams.values():
                r.mask = mask
            skipped = sum(r.skipped for r in recorders)
            if seen_batches == done_batches:  # the first batch: inputs the model does not take end in one line
                _first_run(model, inputs, device)
            else:
                run_model(model, inputs, device)
            seen_batches += 1
            if sum(r.skipped for r in recorders) == skipped:  # a batch left out (NaN/Inf) at any site adds no inputs
                seen_samples += batch_size(inputs)
            if checkpoint_every and checkpoint is not None and seen_batches % checkpoint_every == 0:
                snapshot().save(checkpoint)
            if seen_batches == num_batches or seen_samples == num_samples:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for r in recorders:
        r.finish()
    stats = all_gather_stats(snapshot())
    if stats.batches == 0:
        raise VbpError("the calibration data yielded no inputs; give a data set with at least one sample")
    if samples:
        stats.samples = {
            r.site.name: {"pre": r.reservoir.pre.cpu(), "post": r.reservoir.post.cpu()}
            for r in recorders
            if r.reservoir.pre is not None
        }
    return stats
