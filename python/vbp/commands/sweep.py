"""vbp sweep: calibrate once, prune by every method at every rate, optionally fine-tune; table and figures."""

from dataclasses import replace
from pathlib import Path

from ..compensation import Affine
from ..errors import VbpError
from ..families import site_widths
from ..files import check_writable
from ..select import check_selection_options
from ..workflows.data import dataset, is_text_model
from ..workflows.finetune import FinetuneConfig
from .arguments import add_data_args, add_model_args, add_selection_args
from .options import calibrate_on_data, compensation_of, model_of, val_dataset
from .paths import check_outputs_spare_inputs

NAME = "sweep"
HELP = "prune at many rates by several methods; Table 10-shaped table and figures"


def add_arguments(p) -> None:
    from ..workflows.sweep import DEFAULT_METHODS

    add_model_args(p)
    add_data_args(p)
    p.set_defaults(batch_size=256)
    p.add_argument("--val-data", help="evaluation data (default: the digits test split with --data digits)")
    p.add_argument("--rates", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7", help="comma-separated pruning rates")
    p.add_argument(
        "--methods",
        help="comma-separated CRITERION[+COMPENSATION], e.g. variance+mean (VBP), variance+affine, redundancy+affine "
        f"(the first one's plan is used for the activation figures; default {','.join(DEFAULT_METHODS)})",
    )
    add_selection_args(p)
    # --criterion / --compensation name one method instead of --methods (unset criterion: variance, compensation: mean)
    p.set_defaults(criterion=None, compensation=None, scope="global")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune every pruned model this many epochs")
    p.add_argument("--samples", type=int, default=4096, help="activation values sampled per site for histograms")
    p.add_argument("--figure-rate", type=float, default=0.5, help="rate shown in the layer and curve figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder for table.csv/.md, sweep.json and the figures")


def run(args) -> None:
    from ..workflows.figures import sweep_figures  # matplotlib: imported when used
    from ..workflows.sweep import parse_rates, sweep, table_markdown, write_tables

    rates = parse_rates(args.rates)
    methods = _methods(args)
    if args.samples < 1:
        raise VbpError(f"--samples must be at least 1 (activation values kept per site for the figures), got {args.samples}")
    if args.finetune_epochs < 0:
        raise VbpError(f"--finetune-epochs must be 0 (no fine-tuning) or more, got {args.finetune_epochs}")
    output = Path(args.output)
    check_outputs_spare_inputs(NAME, args)
    check_writable(output / "table.csv")
    model = model_of(args)
    if is_text_model(model):
        raise VbpError(
            f"{args.model} is a text model, and vbp sweep measures the top-1 accuracy of image classifiers: compare "
            "a text model with its pruned copies by vbp eval --ratio R --data FILE.txt (embedding agreement), one "
            "rate at a time"
        )
    check_selection_options(site_widths(model), args.min_keep, args.round_to)
    val = val_dataset(args.val_data, args.data, model, args.skip_bad_images)
    if val is None:
        raise VbpError("the sweep needs evaluation data: give --val-data DIR (or use --data digits)")
    stats = calibrate_on_data(args, model, any(m.needs_covariance for m in methods), samples=args.samples)
    train = None
    if args.finetune_epochs:
        train = dataset(args.data, model, split="train", training=True, skip_bad=args.skip_bad_images)
    config = FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, seed=args.seed) if train else None
    result = sweep(
        model,
        stats,
        rates,
        methods,
        val,
        train,
        config,
        seed=args.seed,
        progress=True,
        scope=args.scope,
        min_keep=args.min_keep,
        round_to=args.round_to,
        batch_size=args.batch_size,
    )
    write_tables(result, args.model, output)
    figure_rate = min(rates, key=lambda r: abs(r - args.figure_rate))
    sweep_figures(result, stats, figure_rate, str(methods[0]), output)
    print(table_markdown(result, args.model))
    print(f"wrote the table and figures to {output}/")


def _methods(args) -> list:
    """--criterion/--compensation (as prune takes them) name one method; without them, --methods, where --ridge
    applies to the affine ones. Both at once are refused: each would rewrite the other."""
    from ..method import Method
    from ..workflows.sweep import DEFAULT_METHODS

    one = [o for o, v in (("--criterion", args.criterion), ("--compensation", args.compensation),
                          ("--no-compensation", args.no_compensation)) if v]
    if one and args.methods is not None:
        compensation = args.compensation or ("none" if args.no_compensation else "mean")
        raise VbpError(
            f"--methods names each method's criterion and compensation, and {' and '.join(one)} name one method: give "
            f"--methods alone (e.g. --methods {args.criterion or 'variance'}+{compensation}) or "
            f"{' and '.join(one)} without --methods"
        )
    if one:
        return [Method(args.criterion or "variance", compensation_of(args))]
    methods = [Method.parse(m) for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",")]
    if args.ridge is None:
        return methods
    if not any(m.compensation.name == "affine" for m in methods):
        raise VbpError("--ridge applies to affine compensation, and no method of --methods uses it")
    return [replace(m, compensation=Affine(ridge=args.ridge)) if m.compensation.name == "affine" else m for m in methods]
