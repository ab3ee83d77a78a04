"""vbp prune: calibrate (or read --stats), select, compensate and slice; write the model, plan and summary."""

from pathlib import Path

from ..checkpoint import save_pruned
from ..families import site_widths
from ..files import check_writable
from ..report import format_summary, summarize, write_summary
from ..select import check_ratio, check_selection_options
from .options import (
    add_data_args,
    add_model_args,
    add_selection_args,
    add_stats_args,
    check_stats_args,
    compensation_of,
    model_of,
    pruned_model,
    stats_for,
)
from .paths import check_outputs_spare_inputs, command_outputs

NAME = "prune"
HELP = "prune the lowest-variance MLP neurons, with mean-shift (or affine) compensation"


def add_arguments(p) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--ratio", type=float, required=True, help="fraction of all MLP hidden neurons to remove, in [0, 1)")
    add_selection_args(p)
    add_stats_args(p)
    p.add_argument("--output", help="folder to write model.safetensors, plan.json (and stats.safetensors) to")
    p.add_argument("--summary", help="write MACs, params and widths as JSON to this file")


def run(args) -> None:
    check_ratio(args.ratio)
    compensation_of(args)  # contradictory options end here, before any work
    check_stats_args(args)
    check_outputs_spare_inputs(NAME, args)
    for path in command_outputs(NAME, args):
        check_writable(path)
    model = model_of(args, reads_data=not args.stats)
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
