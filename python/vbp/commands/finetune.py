"""vbp finetune: fine-tune a pruned model with distillation from the unpruned one (resumable, torchrun-aware)."""

import argparse
import json
from pathlib import Path

from ..checkpoint import load_pruned, save_pruned
from ..errors import VbpError
from ..files import check_writable
from ..output_folder import check_folder, claim_folder, folder_files, model_id_of, read_manifest, staged_folder
from ..workflows.data import data_fingerprint, dataset, is_text_model
from ..workflows.distill import HIDDEN_LOSSES
from ..workflows.finetune import CHECKPOINT, TRAIN_ONLY, FinetuneConfig, finetune, output_kind
from ..workflows.text import is_causal_lm
from .arguments import add_data_args, add_model_args, add_resume_args
from .options import (
    builder_named,
    check_model_of_pruned,
    check_resume_args,
    load_model,
    reference_of,
    val_dataset,
    weights_of,
)
from .paths import FINETUNE_FILES, check_outputs_spare_inputs
from .session import distributed_session

NAME = "finetune"
HELP = "fine-tune a pruned model (image or text), distilling from the unpruned one"
KD_DEFAULTS = {"kd_alpha": 0.5, "kd_temperature": 2.0, "kd_loss": "mse", "kd_pooled": 1.0}


def add_arguments(p) -> None:
    add_model_args(p, input_size=False)
    add_data_args(p)
    p.add_argument("--pruned", required=True, help="the pruned model file to fine-tune (model.safetensors)")
    p.add_argument(
        "--val-data",
        help="evaluation data: an image folder, or for a text model a .txt file of other sentences than --data's "
        "(default: the digits test split with --data digits; none otherwise)",
    )
    p.add_argument("--output", required=True, help="folder for checkpoint.pt, log.json/csv and model.safetensors")
    add_resume_args(p, "the checkpoint in --output", "lr, epochs, batch size")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output folder that already holds a fine-tuning run, or replace one another "
        "command (or program) wrote (the folder is replaced whole)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="passes over the training data (default 10; with --time-budget: as many as fit, at most this many)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="stop within this many minutes (teacher text, timing, training, validation, checkpoints): the steps and "
        "the learning-rate schedule are fitted to it after timing a few steps, and model.safetensors keeps the best "
        "validated weights; --resume gives a run what is left of its budget",
    )
    p.add_argument(
        "--teacher-text",
        type=int,
        metavar="N",
        help="causal LMs: mix N texts the unpruned model writes itself from varied prompts (64 tokens each, seeded "
        "by --seed, cached in --output) into --data, and validate on a few more from held-out prompts; default: "
        "about as many as --data's sentences (48 to 240, fewer under a tight --time-budget), since distilling on "
        "one kind of text alone narrows the model to it; 0: --data alone",
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 on images, 3e-4 on text)")
    p.set_defaults(batch_size=None)  # by the data, in defaults_by_data
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--teacher",
        help="model id of the teacher (default: the unpruned model the student came from; "
        "its weights from --pretrained/--checkpoint)",
    )
    p.add_argument("--no-kd", action="store_true", help="plain cross-entropy, no distillation")
    # the distillation options default to None, so that one given where it means nothing is refused (_kd_options)
    p.add_argument(
        "--kd-alpha",
        type=float,
        help=f"weight of the distillation term against the labels, in [0, 1] (labelled data; default {KD_DEFAULTS['kd_alpha']})",
    )
    p.add_argument(
        "--kd-temperature",
        type=float,
        help=f"softmax temperature of the distilled logits (classifiers, language models; default {KD_DEFAULTS['kd_temperature']})",
    )
    p.add_argument(
        "--kd-loss",
        choices=HIDDEN_LOSSES,
        help="distance of hidden states: an encoder's last one, and every block's output with --kd-layers "
        f"(default {KD_DEFAULTS['kd_loss']})",
    )
    p.add_argument(
        "--kd-pooled",
        type=float,
        metavar="W",
        help="weight of the cosine loss on the mean-pooled sentence embedding, for encoders (0: off; default "
        f"{KD_DEFAULTS['kd_pooled']})",
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
    given_kd = _kd_options(args)
    _check_teacher_text_args(args)
    defaults_by_data(args)
    budget = args.time_budget * 60 if args.time_budget is not None else None
    config = FinetuneConfig(
        epochs=args.epochs if args.epochs is not None else None if budget is not None else 10,
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
        data_fingerprint=data_fingerprint(args.data),
        time_budget_s=budget,
        teacher_text=args.teacher_text,
    )
    config.validate()
    output = Path(args.output)
    check_outputs_spare_inputs(NAME, args)
    if not _run_before_manifests(output):
        check_folder(output, NAME, None, args.overwrite, replaced=False)  # a folder of another command or program
    check_writable(output / "model.safetensors")
    _check_no_run_overwritten(output, args.resume, args.overwrite)
    with distributed_session(args.device) as (device, rank, _):
        student = load_pruned(args.pruned, device, model=builder_named(args.model))
        check_model_of_pruned(args.model, student, args.pruned)
        model_id = model_id_of(student)
        if rank == 0 and not _run_before_manifests(output):
            check_folder(output, NAME, model_id, args.overwrite, replaced=False)  # a run of another model
        if is_text_model(student) and args.no_kd:
            raise VbpError(
                f"{args.pruned} is a text model and a text file has no labels: it is fine-tuned by distillation "
                "from its unpruned model; leave out --no-kd"
            )
        if args.teacher_text is not None and not is_causal_lm(student):
            raise VbpError(
                f"--teacher-text means nothing for {model_id}: only a causal LM writes the text it would mix in; "
                "leave it out"
            )
        teacher = None
        if not args.no_kd and args.teacher:
            weights = weights_of(args.teacher, args.pretrained, args.checkpoint, args.num_classes)
            teacher = load_model(args.teacher, weights, device)  # seeded random weights are warned of, as --model's
        elif not args.no_kd:
            teacher = reference_of(student, args.pretrained, args.checkpoint, args.num_classes, device)
        train = dataset(args.data, student, split="train", training=True, skip_bad=args.skip_bad_images)
        val = val_dataset(args.val_data, args.data, student, args.skip_bad_images)
        if given_kd:
            _check_kd_meaningful(given_kd, *output_kind(student, train), args.kd_layers)
        if rank == 0:
            _start_run(output, model_id, args.overwrite)
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
        kept = next((row for row in history if row.get("kept")), history[-1])  # a budget's best validated
        print(json.dumps(kept))
        which = f" (the weights of step {kept['step']}, the best validated)" if kept is not history[-1] else ""
        print(f"wrote the fine-tuned model{which} to {output / 'model.safetensors'} and the log to {output}/log.csv")


def _check_teacher_text_args(args) -> None:
    """Refuse --teacher-text where no teacher writes text: without distillation, or on image data."""
    if args.teacher_text is None:
        return
    if args.no_kd:
        raise VbpError("--teacher-text is written by the unpruned model, and --no-kd turns distillation from it off: "
                       "give one of them")
    if not args.data.endswith(".txt"):
        raise VbpError(f"--teacher-text means nothing for --data {args.data}: it mixes text a causal LM writes into "
                       "a text file's sentences; leave it out")


def _flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


def _kd_options(args) -> list[str]:
    """The distillation options given on the command line; refused with --no-kd, which turns distillation off.
    Those not given take their defaults."""
    given = [k for k in (*KD_DEFAULTS, "kd_layers") if getattr(args, k) is not None]
    if args.no_kd and given:
        raise VbpError(f"{_flags(given)} shape the distillation, and --no-kd turns it off: leave them out")
    for name, default in KD_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return given


def _check_kd_meaningful(given: list[str], target: str, labelled: bool, kd_layers: bool | None) -> None:
    """Refuse the distillation options `given` that what the student outputs (`target`) and the data
    (`labelled`) make meaningless, before the first epoch."""
    layers = target in ("hidden", "tokens") if kd_layers is None else kd_layers
    why = {}
    if target == "hidden":
        why["kd_temperature"] = "an encoder is distilled by its hidden states, which have no temperature"
    else:
        why["kd_pooled"] = "the pooled sentence embedding is an encoder's, and this model outputs " + target
        if not layers:
            why["kd_loss"] = "it measures hidden states: an encoder's, or every block's with --kd-layers"
    if not labelled:
        why["kd_alpha"] = "it weighs distillation against labels, and this data has none: distillation is the whole loss"
    meaningless = [k for k in given if k in why]
    if meaningless:
        raise VbpError(
            f"{_flags(meaningless)} {'means' if len(meaningless) == 1 else 'mean'} nothing here: "
            + "; ".join(why[k] for k in meaningless) + f"; leave {'it' if len(meaningless) == 1 else 'them'} out"
        )


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


def _run_before_manifests(output: Path) -> bool:
    """Whether `output` holds a run of a vbp that wrote no manifest (a checkpoint and only fine-tuning files): it
    is resumed or replaced like a run of this one (resuming checks the checkpoint's model)."""
    if read_manifest(output) is not None or not (output / CHECKPOINT).is_file():
        return False
    return all(name in FINETUNE_FILES for name in folder_files(output))


def _start_run(output: Path, model_id: str, overwrite: bool) -> None:
    """Record the folder as this model's fine-tuning run (`vbp.output_folder`), right before the first epoch. The
    folder is filled file by file and resumed in place, so it is not staged; --overwrite swaps in an empty one
    first, so that no checkpoint or log of the old run stays beside the new run's."""
    if overwrite:
        with staged_folder(output, NAME, model_id):
            pass
    else:
        claim_folder(output, NAME, model_id)


def interrupted_hint(args) -> str:
    if (Path(args.output) / CHECKPOINT).is_file():
        return f"run the same command with --resume to continue from the last checkpoint in {args.output}"
    return "no epoch was finished, so there is nothing to resume: run the same command again"
