"""The checks of the arguments several commands share (`arguments.py` declares them), and the helpers that turn
their values into models, data and statistics. The helpers take values where they can, so the library can call
them too."""

import copy
import itertools
import sys
from pathlib import Path

import torch
from torch import nn

from ..batches import run_model
from ..calibrate import calibrate
from ..compensation import Affine, Compensation
from ..distributed import shard
from ..errors import VbpError
from ..families import family_for_id, find_sites, python_builder, site_widths
from ..families.embedded import MODEL_NAME
from ..families.spec import check_flow
from ..fingerprint import weights_fingerprint
from ..method import needs_covariance
from ..model_attributes import PRUNING
from ..models import create_model, example_input, model_name
from ..prune import prune
from ..select import select
from ..sequential import prune_sequential
from ..stats import Stats
from ..workflows.data import check_data, dataset, first_input_shape, loader


def check_resume_args(args) -> None:
    if args.resume_anyway and not args.resume:
        raise VbpError("--resume-anyway accepts changed options when resuming: give it with --resume")


def check_stats_args(args) -> None:
    if args.stats_anyway and not args.stats:
        raise VbpError("--stats-anyway accepts --stats gathered on other weights: give it with --stats")


CALIBRATION_ONLY = ("backend", "skip_nonfinite")  # data options that only shape a calibration
DATA_OPTIONS = ("data", "batch_size", "num_batches", "skip_bad_images", *CALIBRATION_ONLY)


def check_data_options_used(args, calibrates: bool, reads_data: bool, why: str, recorded: dict | None = None) -> None:
    """Refuse data options (given: not at their defaults) that this run would ignore: all of them when it reads no
    data (`reads_data`), --backend and --skip-nonfinite when it does not calibrate; --skip-bad-images when no data it
    reads is an image folder. `why` says why, for the message ("--stats gives statistics gathered before").
    recorded: the options the statistics were gathered with (`Stats.run`): one given as it was then is no surprise
    (the same options given to calibrate and prune), and passes."""
    import argparse

    from .arguments import add_data_args

    parser = argparse.ArgumentParser()
    add_data_args(parser)
    defaults = vars(parser.parse_args([]))
    unused = DATA_OPTIONS if not reads_data else CALIBRATION_ONLY if not calibrates else ()
    recorded = recorded or {}
    given = ["--" + k.replace("_", "-") for k in unused
             if getattr(args, k, defaults[k]) not in (defaults[k], recorded.get(k, defaults[k]))]
    if given:
        verb = "shapes" if len(given) == 1 else "shape"
        what = "a calibration" if set(given) <= {"--backend", "--skip-nonfinite"} else "the data read"
        raise VbpError(f"{', '.join(given)} {verb} {what}, and {why}: leave {'it' if len(given) == 1 else 'them'} out")
    folders = [d for d in (args.data, getattr(args, "val_data", None)) if d and Path(d).is_dir()]
    if reads_data and args.skip_bad_images and not folders:
        raise VbpError(f"--skip-bad-images leaves out unreadable images, and --data {args.data} is no image folder: "
                       "leave it out")


def compensation_of(args) -> Compensation:
    """--compensation (with --ridge for affine), or none with --no-compensation; options that contradict each
    other are refused."""
    if args.no_compensation and args.compensation not in (None, "mean"):
        raise VbpError(f"--no-compensation contradicts --compensation {args.compensation}: give one of them")
    ridge = getattr(args, "ridge", None)
    compensation = "none" if args.no_compensation else args.compensation or ("affine" if ridge is not None else "mean")
    if ridge is None:
        return Compensation.resolve(compensation)
    if compensation != "affine":
        raise VbpError(f"--ridge applies to --compensation affine only, not {compensation}")
    return Affine(ridge=ridge)


PAPER_METHOD = {"criterion": "variance", "compensation": "mean", "scope": "global"}
GATED_METHOD = {"criterion": "weighted_variance", "compensation": "affine", "scope": "residual"}


def settle_method(args, model: nn.Module) -> None:
    """Fill in the --criterion, --compensation and --scope the user left out: the paper's VBP (variance, mean,
    global) for plain MLPs; for gated MLPs (LLaMA, Qwen, ...) what docs/llm.md measured best, said in one line:
    their hidden means sit near zero, so mean compensation does nothing, and raw scores span orders of magnitude
    across a deep LM's layers, so they are compared relative to the residual stream (scope residual; per layer
    where the model has no repeated blocks, or the criterion scores in other units)."""
    from ..criteria import Criterion
    from ..streams import stream_block

    sites = find_sites(model)
    gated = any(s.gated for s in sites)
    defaults = dict(PAPER_METHOD)
    if gated:
        defaults = dict(GATED_METHOD)
        criterion = Criterion.resolve(args.criterion or defaults["criterion"])
        if not criterion.output_units or any(stream_block(model, s) is None for s in sites):
            defaults["scope"] = "layer" if args.ratio is not None else "global"
        if args.no_compensation:
            defaults.pop("compensation")
    chosen = {k: v for k, v in defaults.items() if getattr(args, k, None) is None}
    for key, value in chosen.items():
        setattr(args, key, value)
    if chosen and gated:
        said = " ".join(f"--{k} {v}" for k, v in chosen.items())
        print(f"gated MLPs: pruning with {said} (measured best, docs/llm.md); the paper's VBP is --criterion variance "
              "--compensation mean --scope global", file=sys.stderr)


def weights_of(name: str, pretrained: bool, checkpoint: str | None, num_classes: int | None) -> dict:
    """create_model arguments for the weights; the embedded model always has its own."""
    weights = dict(pretrained=pretrained or (name == MODEL_NAME and checkpoint is None), checkpoint=checkpoint)
    if num_classes is not None:
        if num_classes < 1:
            raise VbpError(f"--num-classes must be at least 1, got {num_classes}")
        if family_for_id(name)[0].name not in ("timm", "torchvision"):
            raise VbpError(
                f"--num-classes applies to timm and tv: models only, not {name}: leave it out (an hf: model has the "
                "head its config.json names, a py: model the one its builder makes)"
            )
        weights["num_classes"] = num_classes
    return weights


def check_device(device: str) -> str:
    """A clear error for a device that does not parse or is not here, before any work."""
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise VbpError(f"--device '{device}' is not a device name; use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise VbpError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu")
    return device


def load_model(name: str, weights: dict, device: str) -> nn.Module:
    """The model `name` with `weights` (see weights_of) on `device`; warns when its weights are random."""
    check_device(device)
    random_weights = not (weights["pretrained"] or weights["checkpoint"] or name.startswith(("hf:", "gguf:")))
    source = "random weights" if random_weights else weights["checkpoint"] or "its pretrained weights"
    print(f"loading {name} with {source} on {device}", file=sys.stderr)
    # random weights come from a fixed seed, so that a resumed calibration and every torchrun rank see the same
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name, **weights).to(device)
    if random_weights:
        print(
            f"warning: {name} has random weights (no --pretrained, no --checkpoint): accuracy, retention and "
            "the choice of neurons say nothing about a trained model",
            file=sys.stderr,
        )
    return model


def settle_input_shape(model: nn.Module, input_size: str | None, data: str | None, skip_bad: bool = False) -> None:
    """Give a py: model the input shape vbp runs it at: `input_size` ('C,H,W'), else the shape it declares, else
    that of the first input of the data `data` (None: the command reads no data). A VbpError, before any work,
    when there is none, or when `input_size` is given for a model of another family."""
    if not python_builder.owns(model):
        if input_size is not None:
            raise VbpError("--input-size is for py: models; the other families know their input size")
        return
    source = "the input shape its builder sets"
    if input_size is not None:
        python_builder.set_input_shape(model, python_builder.parse_input_size(input_size))
        source = "--input-size"
    elif python_builder.input_shape(model) is None and data is not None:
        python_builder.set_input_shape(model, first_input_shape(data, model, skip_bad))
        source = f"the first input of --data {data}"
    example = python_builder.example_input(model)
    try:  # one forward pass: a shape the model cannot take ends here, not in a traceback deep in the run
        with torch.inference_mode():
            run_model(model, example, next(model.parameters()).device)
    except Exception as exc:  # the user's model: any exception, said in one line
        shape = "x".join(map(str, example.shape[1:]))
        raise VbpError(
            f"{python_builder.model_id(model)} fails on an input of shape {shape} (from {source}): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}; give --input-size C,H,W of the inputs it takes"
        ) from exc


def model_of(args, reads_data: bool = True) -> nn.Module:
    """--model with --pretrained/--checkpoint/--num-classes on --device; a py: model's input size from
    --input-size, else from the first input of --data when the command reads it (`reads_data`); --sites,
    checked on an example input. Bad input ends here, before any work."""
    model = load_model(args.model, weights_of(args.model, args.pretrained, args.checkpoint, args.num_classes),
                       args.device)
    if reads_data:
        check_data(args.data, model)
    settle_input_shape(model, args.input_size, args.data if reads_data else None, args.skip_bad_images)
    if args.sites:
        find_sites(model, spec=args.sites)  # the spec stays with the model
        check_flow(model, example_input(model))
    return model


def batches(spec: str, model: nn.Module, split: str, batch_size: int, num_batches: int | None, skip_bad: bool):
    """Batches of the data `spec` (this process's shard of it under torchrun)."""
    num_inputs = batch_size * (num_batches or 1)
    data = dataset(spec, model, split=split, num_images=num_inputs, skip_bad=skip_bad)
    return loader(shard(data), batch_size)


def limited(data, num_batches: int | None):
    """The first num_batches batches (all when None), as a re-iterable list or the loader itself."""
    if num_batches is None:
        return data
    if num_batches < 1:
        raise VbpError(f"--num-batches must be at least 1, got {num_batches}")
    return list(itertools.islice(data, num_batches))


def val_dataset(val_data: str | None, data: str, model: nn.Module, skip_bad: bool):
    """--val-data, or the digits test split with --data digits; None when neither is given."""
    if val_data or data == "digits":
        return dataset(val_data or data, model, split="test", skip_bad=skip_bad)
    return None


def run_options(args) -> dict:
    """The options that shape calibration statistics, recorded with them (and checked on --resume)."""
    names = ("model", "pretrained", "checkpoint", "sites", "data", "batch_size", "num_batches", "skip_nonfinite")
    return {n: getattr(args, n) for n in names}


def train_batches(args, model: nn.Module):
    """Batches of --data's train split (or the split a command set as `args.calibration_split`: eval --ratio on a
    text file calibrates on its first half), as calibration reads them."""
    split = getattr(args, "calibration_split", "train")
    return batches(args.data, model, split, args.batch_size, args.num_batches, args.skip_bad_images)


def calibration_options(args) -> dict:
    """`vbp.calibrate`'s options from the data arguments: how many batches, the backend, the NaN/Inf policy."""
    return dict(num_batches=args.num_batches, backend=args.backend, nonfinite="skip" if args.skip_nonfinite else "error")


def calibrate_on_data(args, model: nn.Module, covariance: bool, samples: int = 0, **resume) -> Stats:
    """Calibrate `model` on --data's train split with the data options of `args`."""
    stats = calibrate(
        model,
        train_batches(args, model),
        samples=samples,
        covariance=covariance,
        run=run_options(args),
        **calibration_options(args),
        **resume,
    )
    if any(stats.skipped.values()):
        print(f"left out batches with NaN/Inf activations, per site: {stats.skipped}")
    return stats


def stats_for(args, model: nn.Module) -> Stats:
    """The statistics of --stats when given (checked against the model), else a calibration on --data now
    (with covariance when --criterion or --compensation needs it)."""
    if not args.stats:
        return calibrate_on_data(args, model, needs_covariance(args.criterion, compensation_of(args)))
    if not Path(args.stats).exists():
        raise VbpError(
            f"statistics file {args.stats} does not exist; run `vbp calibrate --stats {args.stats}` first "
            "or leave out --stats to calibrate now"
        )
    stats = Stats.load(args.stats)
    stats.check_matches(model_name(model), site_widths(model), what=f"--model ({args.model})")
    if not args.stats_anyway:
        stats.check_weights(weights_fingerprint(model), source=f"the statistics in {args.stats}")
    print(f"statistics from {args.stats}")
    return stats


def builder_named(given: str) -> str | None:
    """--model as `load_pruned`'s model=: a py: builder the user names (their consent to run it); None for other
    ids, which check_model_of_pruned compares with the file (the default, the embedded model, names none)."""
    return given if given.startswith("py:") else None


def check_model_of_pruned(given: str, pruned: nn.Module, path: str) -> None:
    """Refuse a --model (other than the default) that is not the one the --pruned file was pruned from: the
    unpruned reference is rebuilt from the file, and the other model would be silently ignored."""
    from ..model_ids import same_model
    from ..models import model_source

    recorded = model_source(pruned)["model"]
    if given != MODEL_NAME and not same_model(given, recorded):
        raise VbpError(
            f"--pruned {path} was pruned from {recorded}, not --model {given}: its unpruned reference is rebuilt "
            "from the file; leave out --model (or give that one)"
        )


def reference_of(pruned: nn.Module, pretrained: bool, checkpoint: str | None, num_classes: int | None, device: str):
    """The unpruned model a pruned one came from: its id and construction arguments, with these weights."""
    from ..models import model_source

    source = model_source(pruned)
    name = source["model"]
    weights = weights_of(name, pretrained, checkpoint, num_classes)
    reference = load_model(name, {**source.get("kwargs", {}), **weights}, device)  # warns of random weights too
    recorded = pruned.__dict__.get(PRUNING, {}).get("weights")
    if recorded and recorded != weights_fingerprint(reference):
        raise VbpError(
            f"the pruned model was pruned from other weights than {name} has with these options: give the "
            "--checkpoint (or --pretrained) it was pruned from, so that it is compared with its own unpruned model"
        )
    return reference


def pruned_model(args, model, stats, latency=None):
    """(plan, pruned copy of `model`) by the pruning options of `args` (a --target-speedup by the
    `vbp.latency.LatencyTable` `latency`; --sequential: site by site, calibrating again on --data)."""
    plan = select(
        stats,
        args.ratio,
        scope=args.scope,
        min_keep=args.min_keep,
        round_to=args.round_to,
        criterion=args.criterion,
        model=model,
        target_speedup=getattr(args, "target_speedup", None),
        latency_budget_ms=getattr(args, "latency_budget_ms", None),
        latency=latency,
    )
    if getattr(args, "sequential", False):
        pruned, plan = prune_sequential(copy.deepcopy(model), plan, train_batches(args, model), compensation_of(args),
                                        **calibration_options(args))
        return plan, pruned
    return plan, prune(copy.deepcopy(model), plan, stats, compensation=compensation_of(args),
                       other_weights=getattr(args, "stats_anyway", False))
