"""vbp prune: calibrate (or read --stats), select, compensate and slice; write the model, plan and summary."""

import copy
from pathlib import Path

from ..checkpoint import save_pruned
from ..files import check_distinct, check_writable
from ..prune import prune
from ..report import format_summary, summarize, write_summary
from ..select import check_ratio, check_selection_options, select
from ..sites import site_widths
from .options import add_data_args, add_model_args, add_pruning_args, compensation_of, model_of, stats_for

NAME = "prune"
HELP = "prune the lowest-variance MLP neurons, with mean-shift (or affine) compensation"


def add_arguments(p) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction of all MLP hidden neurons to remove, in [0, 1)")
    add_pruning_args(p)
    p.add_argument("--output", help="folder to write model.safetensors, plan.json (and stats.safetensors) to")
    p.add_argument("--summary", help="write MACs, params and widths as JSON to this file")


def pruned_model(args, model, stats):
    """(plan, pruned copy of `model`) by the pruning options of `args`."""
    plan = select(
        stats,
        args.ratio,
        scope=args.scope,
        min_keep=args.min_keep,
        round_to=args.round_to,
        criterion=args.criterion,
        model=model,
    )
    return plan, prune(copy.deepcopy(model), plan, stats, compensation=compensation_of(args), ridge=args.ridge)


def run(args) -> None:
    check_ratio(args.ratio)
    compensation_of(args)  # contradictory options end here, before any work
    written = [args.summary]
    if args.output:
        written += [Path(args.output) / name for name in ("model.safetensors", "plan.json", "stats.safetensors")]
    check_distinct(written, [args.stats, args.checkpoint])
    for path in filter(None, written):
        check_writable(path)
    model = model_of(args)
    check_selection_options(site_widths(model), args.min_keep, args.round_to)
    stats = stats_for(args, model)
    plan, pruned = pruned_model(args, model, stats)
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
