"""The `vbp` command: calibrate, prune, eval, finetune, sweep and demo (`vbp COMMAND --help` for each)."""

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path

import torch

from .calibrate import calibrate
from .checkpoint import load_pruned, save_pruned
from .compact import KERNELS, compact
from .compensation import COMPENSATIONS
from .compensation.affine import DEFAULT_RIDGE
from .criteria import CRITERIA, CRITERIA_BY_NAME
from .data import dataset, loader
from .digits import MODEL_NAME
from .distributed import init_from_env, rank_and_world, shard, shutdown
from .errors import VbpError
from .evaluate import accuracy, latencies, latency_images, retention
from .files import check_distinct, check_writable
from .finetune import FinetuneConfig, finetune
from .models import create_model, model_name, model_source
from .prune import prune
from .recorder import BACKENDS
from .report import format_summary, summarize, write_summary
from .select import SCOPES, check_ratio, check_selection_options, select
from .sites import find_sites, site_widths
from .stats import Stats


SHOW_DEFAULTS = argparse.ArgumentDefaultsHelpFormatter  # every command's --help shows its defaults


def _version() -> str:
    from . import __version__

    return __version__


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=MODEL_NAME,
        help="a timm name, hf:DIR_OR_ID (Hugging Face), tv:NAME (torchvision) or py:MODULE:FUNCTION (a builder of "
        "your own); the default is the embedded digits ViT",
    )
    p.add_argument(
        "--sites",
        action="append",
        metavar="SPEC",
        help="name the MLPs yourself, PARENTS:FC1->FC2 or PARENTS:GATE,UP->DOWN (repeatable), e.g. "
        "'encoder.layer.*:intermediate.dense->output.dense'; without it the model's family finds them",
    )
    p.add_argument("--pretrained", action="store_true", help="load the model's pretrained timm weights")
    p.add_argument(
        "--num-classes",
        type=int,
        help="build the model with this many classes (a checkpoint fine-tuned with its own head; timm and tv models)",
    )
    p.add_argument("--checkpoint", help="load weights from this file (safetensors or a torch state dict)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="digits",
        help="an ImageFolder directory, a .txt file of sentences (one per line, for text models), 'digits' "
        "(embedded) or 'synthetic' (random inputs); default digits",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-batches", type=int, help="use at most this many batches")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="statistics backend: fused Triton kernel, PyTorch hooks, or auto (Triton on CUDA)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be read instead of stopping at the first one",
    )
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="leave out (and count) batches whose activations hold NaN/Inf instead of stopping",
    )


def _add_pruning_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scope", choices=SCOPES, default="global", help="rank neurons across all layers or per layer")
    p.add_argument("--criterion", choices=CRITERIA, default="variance", help="neuron score (default: VBP's variance)")
    p.add_argument(
        "--compensation",
        choices=list(COMPENSATIONS),
        default="mean",
        help="what replaces pruned hidden values: their mean (VBP), their least-squares prediction from the kept "
        "ones (affine; calibrates with covariance), or nothing",
    )
    p.add_argument("--no-compensation", action="store_true", help="the same as --compensation none")
    p.add_argument(
        "--ridge",
        type=float,
        help=f"affine compensation's ridge, relative to the kept neurons' mean variance (default {DEFAULT_RIDGE})",
    )
    p.add_argument("--min-keep", type=int, default=1, help="keep at least this many neurons per MLP")
    p.add_argument("--round-to", type=int, default=1, help="round every kept width to a multiple of this")
    p.add_argument("--stats", help="statistics from `vbp calibrate` (default: calibrate on --data now)")


def _pruned(args, model, stats):
    plan = select(
        stats,
        args.ratio,
        scope=args.scope,
        min_keep=args.min_keep,
        round_to=args.round_to,
        criterion=args.criterion,
        model=model,
    )
    return plan, prune(copy.deepcopy(model), plan, stats, compensation=_compensation(args), ridge=args.ridge)


def _compensation(args) -> str:
    return "none" if args.no_compensation else args.compensation


def _needs_covariance(args) -> bool:
    """Whether the chosen criterion or compensation (or --covariance) needs covariances calibrated."""
    if getattr(args, "covariance", False):
        return True
    if getattr(args, "methods", None) is not None and not getattr(args, "criterion", None):
        from .sweep import Method

        return any(Method.parse(m).needs_covariance for m in args.methods.split(","))
    criterion = getattr(args, "criterion", None) or "variance"
    compensation = _compensation(args) if hasattr(args, "compensation") else "none"
    return "covariance" in CRITERIA_BY_NAME[criterion].needs | COMPENSATIONS[compensation].needs


def _load_weights(args, name: str) -> dict:
    """--pretrained / --checkpoint as create_model arguments; the embedded model always has its weights."""
    pretrained = args.pretrained or (name == MODEL_NAME and args.checkpoint is None)
    weights = dict(pretrained=pretrained, checkpoint=args.checkpoint)
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise VbpError(f"--num-classes must be at least 1, got {args.num_classes}")
        weights["num_classes"] = args.num_classes
    return weights


def _check_device(device: str) -> str:
    """A clear error for a device that does not parse or is not here, before any work."""
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise VbpError(f"--device '{device}' is not a device name; use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise VbpError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu")
    return device


def _model(args) -> torch.nn.Module:
    weights = _load_weights(args, args.model)
    model = create_model(args.model, **weights).to(_check_device(args.device))
    if not (weights["pretrained"] or weights["checkpoint"] or args.model.startswith("hf:")):
        print(
            f"warning: {args.model} has random weights (no --pretrained, no --checkpoint): accuracy, retention and "
            "the choice of neurons say nothing about a trained model",
            file=sys.stderr,
        )
    if args.sites:
        find_sites(model, spec=args.sites)  # the spec stays with the model
    return model


def _data(args, model, split: str):
    """Batches of --data (this process's shard of it under torchrun)."""
    num_images = args.batch_size * (args.num_batches or 1)
    data = dataset(args.data, model, split=split, num_images=num_images, skip_bad=args.skip_bad_images)
    return loader(shard(data), args.batch_size)


def _limited(batches, num_batches: int | None):
    """The first num_batches batches (all when None), as a re-iterable list or the loader itself."""
    if num_batches is None:
        return batches
    if num_batches < 1:
        raise VbpError(f"--num-batches must be at least 1, got {num_batches}")
    return list(itertools.islice(batches, num_batches))


def _val_dataset(args, model):
    """--val-data, or the digits test split with --data digits; None when neither is given."""
    if args.val_data or args.data == "digits":
        return dataset(args.val_data or args.data, model, split="test", skip_bad=args.skip_bad_images)
    return None


def _calibrate(args, model, samples: int = 0, **resume) -> Stats:
    stats = calibrate(
        model,
        _data(args, model, "train"),
        num_batches=args.num_batches,
        samples=samples,
        backend=args.backend,
        nonfinite="skip" if args.skip_nonfinite else "error",
        covariance=_needs_covariance(args),
        run=_run_options(args),
        **resume,
    )
    if any(stats.skipped.values()):
        print(f"left out batches with NaN/Inf activations, per site: {stats.skipped}")
    return stats


def _run_options(args) -> dict:
    """The options that shape calibration statistics, recorded with them (and checked on --resume)."""
    names = ("model", "pretrained", "checkpoint", "sites", "data", "batch_size", "num_batches", "skip_nonfinite")
    return {n: getattr(args, n) for n in names}


def _calibrated_stats(args, model) -> Stats:
    """The statistics of --stats when given (checked against the model), else a calibration on --data now."""
    if not args.stats:
        return _calibrate(args, model)
    if not Path(args.stats).exists():
        raise VbpError(
            f"statistics file {args.stats} does not exist; run `vbp calibrate --stats {args.stats}` first "
            "or leave out --stats to calibrate now"
        )
    stats = Stats.load(args.stats)
    stats.check_matches(model_name(model), site_widths(model), what=f"--model ({args.model})")
    print(f"statistics from {args.stats}")
    return stats


def cmd_calibrate(args) -> None:
    check_writable(args.stats)
    check_distinct([args.stats, f"{args.stats}.partial"], [args.checkpoint])
    args.device = init_from_env(args.device)
    rank, world = rank_and_world()
    partial = Path(f"{args.stats}.partial" + (f".rank{rank}" if world > 1 else ""))
    model = _model(args)
    try:
        stats = _calibrate(
            args,
            model,
            checkpoint=partial,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            accept_changes=args.resume_anyway,
        )
    finally:
        shutdown()
    if rank == 0:
        stats.save(args.stats)
        samples = next(iter(stats.sites.values())).count
        print(
            f"wrote statistics of {len(stats.sites)} MLP sites ({stats.images} images, {samples} samples per neuron) "
            f"to {args.stats}"
        )
    partial.unlink(missing_ok=True)


def cmd_prune(args) -> None:
    check_ratio(args.ratio)
    written = [args.summary]
    if args.output:
        written += [Path(args.output) / name for name in ("model.safetensors", "plan.json", "stats.safetensors")]
    check_distinct(written, [args.stats, args.checkpoint])
    for path in filter(None, written):
        check_writable(path)
    model = _model(args)
    check_selection_options(site_widths(model), args.min_keep, args.round_to)
    stats = _calibrated_stats(args, model)
    plan, pruned = _pruned(args, model, stats)
    summary = summarize(model, pruned, args.model, args.ratio)
    print(format_summary(summary))
    if args.output:
        out = Path(args.output)
        save_pruned(pruned, out / "model.safetensors")
        plan.save(out / "plan.json")
        if not args.stats:
            stats.save(out / "stats.safetensors")
        print(f"wrote the pruned model and its plan to {out}/")
    if args.summary:
        write_summary(args.summary, summary)
        print(f"wrote {args.summary}")


def _reference(args, pruned: torch.nn.Module) -> torch.nn.Module:
    """The unpruned model a pruned one came from: its id and kwargs, with --pretrained/--checkpoint."""
    source = model_source(pruned)
    name = source["model"]
    return create_model(name, **{**source.get("kwargs", {}), **_load_weights(args, name)}).to(args.device)


def cmd_eval(args) -> None:
    if args.pruned and args.ratio is not None:
        raise VbpError("--pruned evaluates a model pruned before and --ratio prunes one now: give one of them")
    if args.data == "synthetic":
        raise VbpError("synthetic data has no labels to evaluate against; give --data digits or an ImageFolder")
    if args.latency_batch is not None and args.latency_batch < 1:
        raise VbpError(f"--latency-batch must be at least 1, got {args.latency_batch}")
    args.device = init_from_env(args.device)
    rank, _ = rank_and_world()
    try:
        result = _evaluate(args)
    finally:
        shutdown()
    if rank == 0:
        print(json.dumps(result))


def _evaluate(args) -> dict:
    """cmd_eval's measurements; under torchrun every rank evaluates its shard and the counts are summed."""
    if args.pruned:
        model = load_pruned(args.pruned, args.device)
        reference = _reference(args, model)
    else:
        reference = _model(args)
        model = None
        if args.ratio is not None:
            check_ratio(args.ratio)
            check_selection_options(site_widths(reference), args.min_keep, args.round_to)
            model = _pruned(args, reference, _calibrated_stats(args, reference))[1]
    val = _limited(_data(args, reference, "test"), args.num_batches)
    evaluated = model if model is not None else reference
    if args.compact:
        evaluated = compact(evaluated, args.compact)
    result = accuracy(evaluated, val)
    if model is not None:
        base = accuracy(reference, val)  # the unpruned model's pass: as long as the first, so it shows progress
        result.update(reference_top1=base["top1"], retention_pct=retention(result["top1"], base["top1"]))
    if args.latency_batch:
        images = latency_images(val, args.latency_batch, args.device)
        timed = {"model": evaluated} if model is None else {"model": evaluated, "reference": reference}
        times = latencies(timed, images)
        result["latency_ms"] = 1e3 * times["model"]
        if model is not None:
            result["reference_latency_ms"] = 1e3 * times["reference"]
            result["speedup"] = times["reference"] / times["model"]
    return result


def cmd_finetune(args) -> None:
    config = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        kd_alpha=0.0 if args.no_kd else args.kd_alpha,
        kd_temperature=args.kd_temperature,
        max_batches=args.num_batches,
    )
    config.validate()
    output = Path(args.output)
    check_writable(output / "model.safetensors")
    written = [output / name for name in ("model.safetensors", "checkpoint.pt", "log.json", "log.csv")]
    check_distinct(written, [args.pruned, args.checkpoint])
    args.device = init_from_env(args.device)
    rank, _ = rank_and_world()
    student = load_pruned(args.pruned, args.device)
    teacher = None
    if not args.no_kd:
        if args.teacher:
            teacher = create_model(args.teacher, pretrained=args.pretrained, checkpoint=args.checkpoint).to(args.device)
        else:
            teacher = _reference(args, student)
    train = dataset(args.data, student, split="train", training=True, skip_bad=args.skip_bad_images)
    val = _val_dataset(args, student)
    try:
        history = finetune(
            student, train, val, config, teacher=teacher, output=output, resume=args.resume,
            accept_changes=args.resume_anyway,
        )
    finally:
        shutdown()
    if rank == 0:
        save_pruned(student, output / "model.safetensors")
        print(json.dumps(history[-1]))
        print(f"wrote the fine-tuned model to {output / 'model.safetensors'} and the log to {output}/log.csv")


def cmd_sweep(args) -> None:
    from .figures import sweep_figures
    from .sweep import Method, parse_rates, sweep, table_markdown, write_tables  # matplotlib: imported when used

    rates = parse_rates(args.rates)
    if args.criterion:
        methods = [Method(args.criterion, _compensation(args))]
    else:
        methods = [Method.parse(m) for m in args.methods.split(",")]
    output = Path(args.output)
    check_writable(output / "table.csv")
    model = _model(args)
    val = _val_dataset(args, model)
    if val is None:
        raise VbpError("the sweep needs evaluation data: give --val-data DIR (or use --data digits)")
    stats = _calibrate(args, model, samples=args.samples)
    train = dataset(args.data, model, split="train", training=True, skip_bad=args.skip_bad_images) if args.finetune_epochs else None
    config = FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, seed=args.seed) if train else None
    result = sweep(model, stats, rates, methods, val, train, config, seed=args.seed, progress=True)
    write_tables(result, args.model, output)
    figure_rate = min(rates, key=lambda r: abs(r - args.figure_rate))
    sweep_figures(result, stats, figure_rate, str(methods[0]), output)
    print(table_markdown(result, args.model))
    print(f"wrote the table and figures to {output}/")


def cmd_demo(args) -> None:
    from .demo import run_demo
    from .text_demo import run_text_demo

    run_demo(ratio=args.ratio, output=Path(args.output), device=args.device)
    if not args.no_text:
        run_text_demo(output=Path(args.output))


def build_parser() -> argparse.ArgumentParser:
    from .sweep import DEFAULT_METHODS

    parser = argparse.ArgumentParser(prog="vbp", description="Variance-Based Pruning of trained networks.")
    parser.add_argument("--version", action="version", version=f"vbp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", formatter_class=SHOW_DEFAULTS, help="gather per-neuron activation statistics and save them")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--stats", required=True, help="statistics file to write (.safetensors)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="save the running statistics to STATS.partial every K batches (for --resume)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from STATS.partial")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="with --resume: accept options (data, batch size, weights, ...) that differ from the checkpoint's",
    )
    p.add_argument(
        "--covariance",
        action="store_true",
        help="also gather every site's hidden-value covariance (for --compensation affine and --criterion "
        "redundancy; C^2 x 8 bytes per site)",
    )
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("prune", formatter_class=SHOW_DEFAULTS, help="prune the lowest-variance MLP neurons, with mean-shift compensation")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction of all MLP hidden neurons to remove, in [0, 1)")
    _add_pruning_args(p)
    p.add_argument("--output", help="folder to write model.safetensors, plan.json (and stats.safetensors) to")
    p.add_argument("--summary", help="write MACs, params and widths as JSON to this file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", formatter_class=SHOW_DEFAULTS, help="top-1/top-5 accuracy, and retention against the unpruned model")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument(
        "--pruned",
        help="a model written by `vbp prune --output` (model.safetensors); its unpruned "
        "reference is rebuilt from its timm name with --pretrained/--checkpoint",
    )
    p.add_argument("--ratio", type=float, help="prune --model at this ratio first (calibrating on the train split)")
    p.add_argument(
        "--compact",
        nargs="?",
        const="native",
        choices=list(KERNELS),
        help="run the evaluated model's MLPs as vbp.CompactMlp, with the native kernel (default) or the Triton one",
    )
    p.add_argument(
        "--latency-batch",
        type=int,
        metavar="N",
        help="also time a batch of N evaluation images (median), against the unpruned model when pruned",
    )
    _add_pruning_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", formatter_class=SHOW_DEFAULTS, help="fine-tune a pruned model, distilling from the unpruned one")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--pruned", required=True, help="the pruned model file to fine-tune (model.safetensors)")
    p.add_argument("--val-data", help="evaluation data (default: the digits test split with --data digits)")
    p.add_argument("--output", required=True, help="folder for checkpoint.pt, log.json/csv and model.safetensors")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="with --resume: accept options (lr, epochs, batch size, ...) that differ from the checkpoint's",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        help="timm name of the teacher (default: the unpruned model the student came from; "
        "its weights from --pretrained/--checkpoint)",
    )
    p.add_argument("--no-kd", action="store_true", help="plain cross-entropy, no distillation")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term, in [0, 1]")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sweep", formatter_class=SHOW_DEFAULTS, help="prune at many rates by several criteria; Table 10-shaped table and figures")
    _add_model_args(p)
    _add_data_args(p)
    p.set_defaults(batch_size=256)
    p.add_argument("--val-data", help="evaluation data (default: the digits test split with --data digits)")
    p.add_argument("--rates", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7", help="comma-separated pruning rates")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated CRITERION[+COMPENSATION], e.g. variance+mean (VBP), variance+affine, redundancy+affine "
        "(the first one's plan is used for the activation figures)",
    )
    p.add_argument("--criterion", choices=CRITERIA, help="sweep this criterion alone (instead of --methods)")
    p.add_argument("--no-compensation", action="store_true", help="with --criterion: without mean-shift compensation")
    p.set_defaults(compensation="mean")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune every pruned model this many epochs")
    p.add_argument("--samples", type=int, default=4096, help="activation values sampled per site for histograms")
    p.add_argument("--figure-rate", type=float, default=0.5, help="rate shown in the layer and curve figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder for table.csv/.md, sweep.json and the figures")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", formatter_class=SHOW_DEFAULTS, help="prune the embedded digits ViT and report accuracy, MACs and latency")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--output", default="out/demo", help="folder for the pruned model (default out/demo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-text", action="store_true", help="skip the second part (all-MiniLM-L6-v2 on text)")
    p.set_defaults(func=cmd_demo)
    return parser


def _interrupted_hint(args) -> str:
    """What to run after Ctrl-C, where the command can resume."""
    if args.command == "calibrate" and args.checkpoint_every:
        return f"; run the same command with --resume to continue from {args.stats}.partial"
    if args.command == "finetune":
        return f"; run the same command with --resume to continue from the last epoch in {args.output}"
    return "; nothing was written"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VbpError as exc:
        text = str(exc).strip()
        if text.startswith("Caught VbpError in DataLoader worker"):  # raised in a loader worker: its own message
            text = text.splitlines()[-1].removeprefix("vbp.errors.VbpError: ")
        print(f"vbp {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vbp {args.command}: interrupted{_interrupted_hint(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
