"""vbp prune: calibrate (or read --stats), select, compensate and slice; write the model, plan and summary."""

import math
import shutil
from pathlib import Path

from ..checkpoint import save_pruned
from ..errors import VbpError
from ..families import site_widths
from ..files import check_writable
from ..latency import LatencyTable, measure_speedup, table_for
from ..latency.profile import RUNTIMES, check_batch
from ..output_folder import check_folder, folder_model_id, staged_folder
from ..select import check_ratio, check_selection_options
from ..workflows.report import format_summary, summarize, write_summary
from .arguments import (
    add_data_args,
    add_latency_args,
    add_model_args,
    add_overwrite_arg,
    add_selection_args,
    add_sequential_arg,
    add_stats_args,
)
from .options import (
    check_data_options_used,
    check_stats_args,
    compensation_of,
    model_of,
    pruned_model,
    settle_method,
    stats_for,
)
from .paths import carried_inputs, check_output_kinds, check_outputs_spare_inputs, command_outputs, written_hint

NAME = "prune"
HELP = "prune the lowest-variance MLP neurons, with mean-shift (or affine) compensation"


def add_arguments(p) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--ratio", type=float, help="fraction of all MLP hidden neurons to remove, in [0, 1)")
    p.add_argument(
        "--target-speedup",
        type=float,
        metavar="X",
        help="instead of --ratio: the widths that keep the most score with a predicted end-to-end speed-up of X "
        "(a latency table: --latency-table, or measured now at --latency-batch)",
    )
    p.add_argument(
        "--latency-budget-ms", type=float, metavar="MS", help="instead of --ratio: a predicted latency of MS"
    )
    p.add_argument(
        "--latency-table",
        metavar="FILE",
        help="a table from `vbp profile` (reused when it was measured for this model, batch, runtime and machine); "
        "measured and written there when it does not exist",
    )
    add_latency_args(p)
    add_selection_args(p)
    add_sequential_arg(p)
    add_stats_args(p)
    p.add_argument(
        "--output",
        help="folder to write model.safetensors, plan.json (and stats.safetensors) to; a folder an earlier prune of "
        "the same model wrote is replaced whole, any other is refused",
    )
    p.add_argument("--summary", help="write MACs, params and widths as JSON to this file")
    add_overwrite_arg(p, "an --output folder or a --summary file that another command (or program) wrote")


def run(args) -> None:
    check_target_args(args)
    compensation_of(args)  # contradictory options end here, before any work
    check_stats_args(args)
    check_outputs_spare_inputs(NAME, args)
    check_output_kinds(NAME, args)
    if args.output:
        check_folder(args.output, NAME, folder_model_id(args.model), args.overwrite)
    for path in command_outputs(NAME, args):
        check_writable(path)
    args.written = []  # for the message after Ctrl-C
    model = model_of(args, reads_data=not args.stats or args.sequential)
    settle_method(args, model)
    check_selection_options(site_widths(model), args.min_keep, args.round_to)
    table = latency_table_of(args, model)
    stats = stats_for(args, model)
    check_data_options_used(args, calibrates=not args.stats or args.sequential, reads_data=not args.stats or
                            args.sequential, why="with --stats no data is read (the statistics were gathered before)",
                            recorded=stats.run)
    plan, pruned = pruned_model(args, model, stats, table)
    summary = summarize(model, pruned, args.model, plan.ratio)
    if table is not None or args.latency_batch:
        summary["latency"] = latency_summary(args, model, pruned, plan, table, summary)
    print(format_summary(summary))
    summary_path = Path(args.summary) if args.summary else None
    if args.output:
        out = Path(args.output)
        with staged_folder(out, NAME, folder_model_id(args.model)) as new:
            save_pruned(pruned, new / "model.safetensors")
            plan.save(new / "plan.json")
            if not args.stats:
                stats.save(new / "stats.safetensors")
            elif "--stats" in carried_inputs(NAME, args):  # the folder's own statistics stay with it
                shutil.copy2(args.stats, new / "stats.safetensors")
            if summary_path and summary_path.resolve().is_relative_to(out.resolve()):  # in the folder: swapped in with it
                write_summary(new / summary_path.resolve().relative_to(out.resolve()), summary)
                summary_path = None
        args.written.append(f"{out}/")
        print(f"wrote the pruned model and its plan to {out}/")
    if summary_path:
        write_summary(summary_path, summary)
        args.written.append(summary_path)
    if args.summary:
        print(f"wrote {args.summary}")


def interrupted_hint(args) -> str:
    return written_hint(args)


def check_target_args(args) -> None:
    """One of --ratio, --target-speedup and --latency-budget-ms; a target needs a table or a batch to measure one at."""
    given = [o for o, v in (("--ratio", args.ratio), ("--target-speedup", args.target_speedup),
                            ("--latency-budget-ms", args.latency_budget_ms)) if v is not None]
    if len(given) != 1:
        raise VbpError(f"give one of --ratio, --target-speedup and --latency-budget-ms, not {' and '.join(given) or 'none'}")
    if args.ratio is not None:
        check_ratio(args.ratio)
    elif args.scope == "layer":
        raise VbpError(f"--scope {args.scope} applies to --ratio; {given[0]} chooses every site's width itself")
    if args.target_speedup is not None and not 1 < args.target_speedup < math.inf:
        raise VbpError(f"--target-speedup must be a finite number above 1 (1.5 is 1.5x faster), got {args.target_speedup}")
    if args.latency_budget_ms is not None and not 0 < args.latency_budget_ms < math.inf:
        raise VbpError(f"--latency-budget-ms must be a positive, finite number of milliseconds, got {args.latency_budget_ms}")
    if args.latency_batch is not None:
        check_batch(args.latency_batch)
    if args.runtime and args.latency_batch is None and args.latency_table is None:  # nothing timed or predicted
        raise VbpError(f"--runtime {args.runtime} is the runtime a latency is measured or predicted for, and this run "
                       "has none: give --latency-batch N (or --latency-table FILE), or leave it out")
    has_table = args.latency_table is not None and Path(args.latency_table).exists()
    if args.ratio is None and args.latency_batch is None and not has_table:
        raise VbpError(
            f"{given[0]} needs a latency table: give --latency-table FILE (from vbp profile) or --latency-batch N "
            "to measure one now"
        )


def latency_table_of(args, model) -> LatencyTable | None:
    """The table of --latency-table (checked against the model, --latency-batch and --runtime, whose defaults are
    the table's), or one measured now for a target; None for a --ratio run without a table."""
    if args.ratio is not None and args.latency_table is None:
        return None
    existing = LatencyTable.load(args.latency_table) if args.latency_table and Path(args.latency_table).exists() else None
    batch = args.latency_batch or (existing.key["batch"] if existing else None)
    args.runtime = args.runtime or (existing.key["runtime"] if existing else RUNTIMES[0])
    if batch is None:
        raise VbpError(f"{args.latency_table} does not exist: give --latency-batch N to measure the table there")
    table = table_for(model, batch, args.runtime, args.latency_table)
    if existing is None and args.latency_table:
        print(f"wrote the latency table to {args.latency_table}")
    return table


def latency_summary(args, model, pruned, plan, table: LatencyTable | None, summary: dict) -> dict:
    """The runtime and batch, the target, the table's predicted and (with --latency-batch) the measured speed-up
    of the pruned model over the unpruned one (timed in turn), and the speed-up MACs alone would give."""
    result = {"runtime": args.runtime or RUNTIMES[0], "batch": args.latency_batch or table.key["batch"],
              "mac_speedup": summary["macs_full_g"] / summary["macs_g"]}
    if plan.target is not None:
        result.update(target_speedup=plan.target["target_speedup"], latency_budget_ms=plan.target["latency_budget_ms"])
    if table is not None:
        result.update(predicted_speedup=table.predict_speedup(plan.kept_widths),
                      predicted_ms=table.predict_ms(plan.kept_widths), table_full_ms=table.full_ms)
    if args.latency_batch:
        measured = measure_speedup(model, pruned, args.latency_batch, result["runtime"])
        result.update(measured_speedup=measured["speedup"], latency_ms=measured["latency_ms"],
                      reference_latency_ms=measured["reference_latency_ms"])
    return result
