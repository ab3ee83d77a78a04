"""The `vbp` command: calibrate, prune, eval and demo (`vbp COMMAND --help` for each)."""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from .calibrate import calibrate
from .checkpoint import load_pruned, save_pruned
from .data import dataset, loader
from .digits import MODEL_NAME
from .errors import VbpError
from .evaluate import accuracy
from .files import check_writable
from .models import create_model, model_name
from .prune import prune
from .report import format_summary, summarize, write_summary
from .select import SCOPES, check_ratio, select
from .sites import site_widths
from .stats import Stats


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=MODEL_NAME, help=f"timm model name (default: the embedded {MODEL_NAME})")
    p.add_argument("--pretrained", action="store_true", help="load the model's pretrained timm weights")
    p.add_argument("--checkpoint", help="load weights from this file (safetensors or a torch state dict)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _add_data_args(p: argparse.ArgumentParser, default_batches: int | None = None) -> None:
    p.add_argument("--data", default="digits",
                   help="an ImageFolder directory, 'digits' (embedded) or 'synthetic' (random images); default digits")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-batches", type=int, default=default_batches, help="use at most this many batches")


def _model(args) -> torch.nn.Module:
    pretrained = args.pretrained or (args.model == MODEL_NAME and args.checkpoint is None)
    return create_model(args.model, pretrained=pretrained, checkpoint=args.checkpoint).to(args.device)


def _data(args, model, split: str):
    num_images = args.batch_size * (args.num_batches or 1)
    return loader(dataset(args.data, model, split=split, num_images=num_images), args.batch_size)


def _calibrated_stats(args, model) -> Stats:
    if args.stats and Path(args.stats).exists():
        stats = Stats.load(args.stats)
        stats.check_matches(model_name(model), site_widths(model), what=f"--model ({args.model})")
        print(f"statistics from {args.stats}")
    elif args.stats and args.command == "prune":
        raise VbpError(f"statistics file {args.stats} does not exist; run `vbp calibrate --stats {args.stats}` first "
                       "or leave out --stats to calibrate now")
    else:
        stats = calibrate(model, _data(args, model, "train"), num_batches=args.num_batches)
    return stats


def cmd_calibrate(args) -> None:
    check_writable(args.stats)
    model = _model(args)
    stats = calibrate(model, _data(args, model, "train"), num_batches=args.num_batches)
    stats.save(args.stats)
    samples = next(iter(stats.sites.values())).count
    print(f"wrote statistics of {len(stats.sites)} MLP sites ({samples} samples each) to {args.stats}")


def cmd_prune(args) -> None:
    check_ratio(args.ratio)
    for path in filter(None, (args.summary, args.output and Path(args.output) / "model.safetensors")):
        check_writable(path)
    model = _model(args)
    stats = _calibrated_stats(args, model)
    plan = select(stats, args.ratio, scope=args.scope, min_keep=args.min_keep, round_to=args.round_to)
    pruned = prune(copy.deepcopy(model), plan, stats)
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


def cmd_eval(args) -> None:
    model = load_pruned(args.pruned, args.device) if args.pruned else _model(args)
    if args.data == "synthetic":
        raise VbpError("synthetic data has no labels to evaluate against; give --data digits or an ImageFolder")
    result = accuracy(model, _data(args, model, "test"))
    print(json.dumps(result))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(ratio=args.ratio, output=Path(args.output), device=args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vbp", description="Variance-Based Pruning of trained networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", help="gather per-neuron activation statistics and save them")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--stats", required=True, help="statistics file to write (.safetensors)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("prune", help="prune the lowest-variance MLP neurons, with mean-shift compensation")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--stats", help="statistics from `vbp calibrate` (default: calibrate on --data now)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of all MLP hidden neurons to remove, in [0, 1)")
    p.add_argument("--scope", choices=SCOPES, default="global", help="rank neurons across all layers or per layer")
    p.add_argument("--min-keep", type=int, default=1, help="keep at least this many neurons per MLP")
    p.add_argument("--round-to", type=int, default=1, help="round every kept width to a multiple of this")
    p.add_argument("--output", help="folder to write model.safetensors, plan.json (and stats.safetensors) to")
    p.add_argument("--summary", help="write MACs, params and widths as JSON to this file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a timm model or a pruned model file")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--pruned", help="a model written by `vbp prune --output` (model.safetensors)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="prune the embedded digits ViT and report accuracy, MACs and latency")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--output", default="out/demo", help="folder for the pruned model (default out/demo)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VbpError as exc:
        print(f"vbp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
