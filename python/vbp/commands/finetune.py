"""vbp finetune: fine-tune a pruned model with distillation from the unpruned one (resumable, torchrun-aware)."""

import argparse
import json
from pathlib import Path

from ..checkpoint import load_pruned, save_pruned
from ..errors import VbpError
from ..files import check_writable
from ..workflows.data import dataset, is_text_model
from ..workflows.distill import HIDDEN_LOSSES
from ..workflows.finetune import TRAIN_ONLY, FinetuneConfig, finetune
from .arguments import add_data_args, add_model_args, add_resume_args
from .options import check_model_of_pruned, check_resume_args, load_model, reference_of, val_dataset, weights_of
from .paths import FINETUNE_FILES, check_outputs_spare_inputs
from .session import distributed_session

NAME = "finetune"
HELP = "fine-tune a pruned model (image or text), distilling from the unpruned one"


def add_arguments(p) -> None:
    add_model_args(p, input_size=False)
    add_data_args(p)
    p.add_argument("--pruned", required=True, help="the pruned model file to fine-tune (model.safetensors)")
    p.add_argument("--val-data", help="evaluation data (default: the digits test split with --data digits)")
    p.add_argument("--output", required=True, help="folder for checkpoint.pt, log.json/csv and model.safetensors")
    add_resume_args(p, "the checkpoint in --output", "lr, epochs, batch size")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output folder that already holds a fine-tuning run (its files are replaced)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 on images, 3e-4 on text)")
    p.set_defaults(batch_size=None)  # by the data, in defaults_by_data
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        help="model id of the teacher (default: the unpruned model the student came from; "
        "its weights from --pretrained/--checkpoint)",
    )
    p.add_argument("--no-kd", action="store_true", help="plain cross-entropy, no distillation")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term, in [0, 1]")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument(
        "--kd-loss",
        choices=HIDDEN_LOSSES,
        default="mse",
        help="distance of hidden states: an encoder's last one, and every block's output with --kd-layers",
    )
    p.add_argument(
        "--kd-pooled",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of the cosine loss on the mean-pooled sentence embedding, for encoders (0: off)",
    )
    p.add_argument(
        "--kd-layers",
        action=argparse.BooleanOptionalAction,
        help="also match every block's output (Hugging Face models; default: on for encoders and language "
        "models, off for classifiers)",
    )
    p.add_argument(
        "--train-only",
        choices=TRAIN_ONLY,
        default="all",
        help="tune every parameter, or only the pruned MLPs' layers (faster, less memory)",
    )


def run(args) -> None:
    if args.no_kd and args.teacher:
        raise VbpError("--teacher names a model to distil from and --no-kd turns distillation off: give one of them")
    check_resume_args(args)
    defaults_by_data(args)
    config = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        kd_alpha=0.0 if args.no_kd else args.kd_alpha,
        kd_temperature=args.kd_temperature,
        max_batches=args.num_batches,
        kd_loss=args.kd_loss,
        kd_pooled=args.kd_pooled,
        kd_layers=args.kd_layers,
        train_only=args.train_only,
    )
    config.validate()
    output = Path(args.output)
    check_outputs_spare_inputs(NAME, args)
    check_writable(output / "model.safetensors")
    _check_no_run_overwritten(output, args.resume, args.overwrite)
    with distributed_session(args.device) as (device, rank, _):
        student = load_pruned(args.pruned, device, model=args.model)
        check_model_of_pruned(args.model, student, args.pruned)
        if is_text_model(student) and args.no_kd:
            raise VbpError(
                f"{args.pruned} is a text model and a text file has no labels: it is fine-tuned by distillation "
                "from its unpruned model; leave out --no-kd"
            )
        teacher = None
        if not args.no_kd and args.teacher:
            weights = weights_of(args.teacher, args.pretrained, args.checkpoint, args.num_classes)
            teacher = load_model(args.teacher, weights, device)  # seeded random weights are warned of, as --model's
        elif not args.no_kd:
            teacher = reference_of(student, args.pretrained, args.checkpoint, args.num_classes, device)
        train = dataset(args.data, student, split="train", training=True, skip_bad=args.skip_bad_images)
        val = val_dataset(args.val_data, args.data, student, args.skip_bad_images)
        history = finetune(
            student,
            train,
            val,
            config,
            teacher=teacher,
            output=output,
            resume=args.resume,
            accept_changes=args.resume_anyway,
        )
    if rank == 0:
        save_pruned(student, output / "model.safetensors")
        print(json.dumps(history[-1]))
        print(f"wrote the fine-tuned model to {output / 'model.safetensors'} and the log to {output}/log.csv")


def defaults_by_data(args) -> None:
    """--lr and --batch-size where not given: timm's for images; for text (distillation alone, from a
    pretrained encoder), a smaller step and more of them (docs/recovery.md)."""
    text = args.data.endswith(".txt")
    args.lr = args.lr if args.lr is not None else 3e-4 if text else 5e-4
    args.batch_size = args.batch_size if args.batch_size is not None else 32 if text else 64


def _check_no_run_overwritten(output: Path, resume: bool, overwrite: bool) -> None:
    """A folder that holds a fine-tuning run is continued (--resume) or replaced (--overwrite), never silently
    started over on top of."""
    if resume and overwrite:
        raise VbpError("--resume continues the run in --output and --overwrite starts it over: give one of them")
    existing = [name for name in FINETUNE_FILES if (output / name).exists()]
    if existing and not (resume or overwrite):
        raise VbpError(
            f"{output} already holds a fine-tuning run ({', '.join(existing)}): give --resume to continue it, "
            "--overwrite to start over, or another --output"
        )


def interrupted_hint(args) -> str:
    return f"run the same command with --resume to continue from the last epoch in {args.output}"
