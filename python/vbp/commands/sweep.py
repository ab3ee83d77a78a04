"""vbp sweep: calibrate once, prune by every method at every rate, optionally fine-tune; table and figures."""

from pathlib import Path

from ..criteria import CRITERIA
from ..data import dataset
from ..errors import VbpError
from ..files import check_writable
from ..finetune import FinetuneConfig
from .options import add_data_args, add_model_args, calibrate_on_data, compensation_of, model_of, val_dataset

NAME = "sweep"
HELP = "prune at many rates by several methods; Table 10-shaped table and figures"


def add_arguments(p) -> None:
    from ..sweep import DEFAULT_METHODS

    add_model_args(p)
    add_data_args(p)
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


def run(args) -> None:
    from ..figures import sweep_figures  # matplotlib: imported when used
    from ..sweep import Method, parse_rates, sweep, table_markdown, write_tables

    rates = parse_rates(args.rates)
    if args.criterion:
        methods = [Method(args.criterion, compensation_of(args))]
    else:
        methods = [Method.parse(m) for m in args.methods.split(",")]
    output = Path(args.output)
    check_writable(output / "table.csv")
    model = model_of(args)
    val = val_dataset(args.val_data, args.data, model, args.skip_bad_images)
    if val is None:
        raise VbpError("the sweep needs evaluation data: give --val-data DIR (or use --data digits)")
    stats = calibrate_on_data(args, model, any(m.needs_covariance for m in methods), samples=args.samples)
    train = None
    if args.finetune_epochs:
        train = dataset(args.data, model, split="train", training=True, skip_bad=args.skip_bad_images)
    config = FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, seed=args.seed) if train else None
    result = sweep(model, stats, rates, methods, val, train, config, seed=args.seed, progress=True)
    write_tables(result, args.model, output)
    figure_rate = min(rates, key=lambda r: abs(r - args.figure_rate))
    sweep_figures(result, stats, figure_rate, str(methods[0]), output)
    print(table_markdown(result, args.model))
    print(f"wrote the table and figures to {output}/")
