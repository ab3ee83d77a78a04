"""vbp profile: measure a model's latency table (its MLPs at candidate widths, and the rest of the model once),
the table `vbp prune --target-speedup` selects widths by."""

import torch

from ..errors import VbpError
from ..files import check_writable
from ..latency.profile import DEFAULT_ROUNDS, MAX_SPREAD, RUNTIMES, check_batch, profile
from .arguments import add_latency_args, add_model_args, add_overwrite_arg
from .options import model_of
from .paths import check_output_kinds, check_outputs_spare_inputs

NAME = "profile"
HELP = "measure the latency of a model's MLPs at candidate widths: a table for prune --target-speedup"
DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p) -> None:
    add_model_args(p, reads_data=False)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the dtype the pruned model will run in")
    add_latency_args(p, table=False)
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed calls of every width; its median is kept")
    p.add_argument(
        "--max-spread",
        type=float,
        default=MAX_SPREAD,
        metavar="S",
        help="refuse to save a table whose end-to-end rounds spread by more than S of their median (a busy "
        f"machine; default {MAX_SPREAD})",
    )
    p.add_argument("--output", required=True, help="the table's JSON file")
    add_overwrite_arg(p, "an --output file that holds something else than a latency table")
    p.set_defaults(data=None, skip_bad_images=False)  # profiling reads no data


def run(args) -> None:
    if args.latency_batch is None:
        raise VbpError("give --latency-batch N: the number of inputs per batch the pruned model will run at")
    check_batch(args.latency_batch)
    if not args.max_spread > 0:
        raise VbpError(f"--max-spread must be a positive number (0.5: rounds 50% apart; inf: never refuse), got {args.max_spread}")
    if args.runtime is None:
        args.runtime = RUNTIMES[0]
    check_outputs_spare_inputs(NAME, args)
    check_output_kinds(NAME, args)
    check_writable(args.output)
    model = model_of(args, reads_data=False).to(getattr(torch, args.dtype))
    table = profile(model, args.latency_batch, args.runtime, args.rounds, max_spread=args.max_spread)
    table.save(args.output)
    mlp_ms = table.full_ms - table.fixed_ms
    widths = sum(len(c.widths) for c in table.curves)
    print(
        f"{args.model} at batch {args.latency_batch} ({args.runtime}, {args.dtype}, {table.key['device_name']}): "
        f"{table.full_ms:.1f} ms, of which MLPs {mlp_ms:.1f} ms ({mlp_ms / table.full_ms:.0%}); "
        f"{len(table.shapes)} MLP shape(s), {widths} widths measured in {table.environment['profile_s']:.0f} s"
        + (f"; rounds spread {spread:.0%}" if (spread := table.environment["spread"]) is not None else "")
    )
    print(f"wrote {args.output}")
