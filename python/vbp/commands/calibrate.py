"""vbp calibrate: gather per-neuron statistics of every MLP site and save them (resumable, torchrun-aware)."""

import argparse
import glob
from pathlib import Path

from ..errors import VbpError
from ..files import check_writable
from .arguments import add_data_args, add_model_args, add_overwrite_arg, add_resume_args
from .options import calibrate_on_data, check_data_options_used, check_resume_args, model_of
from .paths import check_output_kinds, check_outputs_spare_inputs
from .session import distributed_session

NAME = "calibrate"
HELP = "gather per-neuron activation statistics and save them"


def add_arguments(p) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--stats", required=True, help="statistics file to write (.safetensors)")
    p.add_argument(
        "--save-partial-every",
        type=int,
        default=0,
        metavar="K",
        help="save the running statistics to STATS.partial every K batches (for --resume); 0: never",
    )
    # its name in vbp 0.1, too easily confused with --checkpoint (weights in): still accepted, not shown
    p.add_argument(
        "--checkpoint-every", type=int, dest="save_partial_every", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    add_resume_args(p, "STATS.partial", "data, batch size, weights")
    add_overwrite_arg(p, "a --stats file that holds something else than statistics (or another model's), or start "
                      "over where STATS.partial holds an interrupted calibration")
    p.add_argument(
        "--covariance",
        action="store_true",
        help="also gather every site's hidden-value covariance (for --compensation affine and --criterion "
        "redundancy; C^2 x 8 bytes per site)",
    )


def run(args) -> None:
    check_resume_args(args)
    check_data_options_used(args, calibrates=True, reads_data=True, why="")
    if args.save_partial_every < 0:
        raise VbpError(f"--save-partial-every must be 0 (never) or a number of batches, got {args.save_partial_every}")
    check_outputs_spare_inputs(NAME, args)
    check_output_kinds(NAME, args)
    check_writable(args.stats)
    _check_no_partial_discarded(args)
    with distributed_session(args.device) as (args.device, rank, world):
        partial = Path(f"{args.stats}.partial" + (f".rank{rank}" if world > 1 else ""))
        model = model_of(args)
        stats = calibrate_on_data(
            args,
            model,
            covariance=args.covariance,
            checkpoint=partial,
            checkpoint_every=args.save_partial_every,
            resume=args.resume,
            accept_changes=args.resume_anyway,
        )
    if rank == 0:
        stats.save(args.stats)
        samples = next(iter(stats.sites.values())).count
        print(
            f"wrote statistics of {len(stats.sites)} MLP sites ({stats.inputs} inputs, {samples} samples per neuron) "
            f"to {args.stats}"
        )
    partial.unlink(missing_ok=True)


def _check_no_partial_discarded(args) -> None:
    """An interrupted calibration's STATS.partial is continued with --resume or started over with --overwrite, never
    silently: a run without --resume would start from zero and replace (or, when it ends, remove) it."""
    partials = sorted(Path(args.stats).parent.glob(f"{glob.escape(Path(args.stats).name)}.partial*"))
    if partials and not args.resume and not args.overwrite:
        raise VbpError(
            f"{partials[0]} holds the statistics of an interrupted calibration: give --resume to continue it, "
            "--overwrite to start over (it is replaced), or another --stats"
        )


def interrupted_hint(args) -> str:
    """How to go on: --resume where partial statistics were saved (under torchrun, one file per rank), else the
    same command again (none is saved before the first K batches)."""
    if not args.save_partial_every:
        return "nothing was written; --save-partial-every K makes a long calibration resumable"
    if list(Path(args.stats).parent.glob(f"{glob.escape(Path(args.stats).name)}.partial*")):
        return f"run the same command with --resume to continue from {args.stats}.partial"
    return (f"no partial statistics were saved yet (the first after {args.save_partial_every} batches), so there is "
            "nothing to resume: run the same command again")
