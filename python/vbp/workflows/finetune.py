"""Fine-tune a pruned model in timm's manner, distilling from the unpruned teacher (`vbp.workflows.distill`
picks the loss from what the model outputs: logits, tokens or hidden states), with labels where the data has
them.

Data: (image, label) items, or sentences (`vbp.workflows.text.Sentences`, tokenized per batch). AdamW (no
weight decay on biases and norms), cosine schedule with linear warm-up stepped per iteration, label smoothing,
gradient clipping, bf16 autocast on CUDA; DistributedDataParallel when torch.distributed is initialised
(torchrun). A checkpoint is written atomically after every epoch, and `resume=True` continues from it to the
same weights an uninterrupted run would reach (random draws are seeded per epoch and rank; the global torch
RNG is reseeded).

Time: a new run times its first steps (the first warms up, the next `TIMED_STEPS` are measured, in parts:
teacher forward, student forward and backward, optimizer) and then says in one line how long it will take.
With `time_budget_s` those steps run at the warm-up's starting learning rate; then the number of steps, and
so the warm-up and cosine schedule over the steps after them, is fitted to what is left of the budget
(validations and checkpoints included); the run is validated and checkpointed at up to `MAX_EVALS` points
(mid-epoch too: a checkpoint records where in the epoch it is), stops before the budget is spent (it checks
before every step), and keeps the best validated weights (`_best_key`).

Causal LMs: text the unpruned model writes itself is mixed into the training text (`teacher_text`, see
`vbp.workflows.teacher_text`), and validation reports perplexity, token KL and top-1 agreement first.
"""

import itertools
import json
import math
import random
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from ..batches import batch_size, first_rows, padding_mask
from ..checkpoint import save_pruned
from ..distributed import rank_and_world, shard
from ..errors import VbpError
from ..families import find_sites
from ..files import atomic_path, read_safetensors, write_csv_atomic, write_text_atomic
from ..models import model_device
from . import teacher_text as teacher_text_module
from .data import collate_for, loader, loader_workers
from .distill import HIDDEN_LOSSES, Distillation, output_target
from .evaluate import accuracy
from .text import Sentences, TextReference, is_causal_lm

TRAIN_ONLY = ("all", "mlp")  # --train-only: every parameter, or only those of the pruned MLP sites

CHECKPOINT = "checkpoint.pt"
TIMED_STEPS = 2  # the steps after the first (which warms up) that give a new run's seconds per step
MAX_EVALS = 8  # validations and checkpoints of a run with a time budget, at most
EVAL_SHARE = 0.2  # of a time budget, validations and checkpoints take at most about this share
WRITE_BYTES_PER_S = 500e6  # assumed speed of checkpoint writes until one is measured
_clock = time.perf_counter  # every time the fine-tuning loop measures (tests replace it)


@dataclass
class FinetuneConfig:
    epochs: int | None = 10  # None: as many as time_budget_s allows
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # at most a tenth of the run
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    kd_alpha: float = 0.5  # 0 turns distillation off
    kd_temperature: float = 2.0
    seed: int = 0
    max_batches: int | None = None  # batches per epoch (--num-batches); None: the whole training set
    kd_loss: str = "mse"  # hidden-state distance (encoders): "mse" or "cosine"
    kd_pooled: float = 1.0  # weight of the mean-pooled embedding's cosine loss (encoders)
    kd_layers: bool | None = None  # also match every block's output (HF models); None: for text models
    train_only: str = "all"  # or "mlp": tune only the pruned MLP sites' layers
    data_fingerprint: str | None = None  # of the training data (`vbp.workflows.data.data_fingerprint`), for resume
    # Stop after this many seconds of `finetune` (teacher text, steps, validation, checkpoints): the steps and
    # the schedule are fitted to it, `epochs` is then a cap, and the best validated weights are kept (`best_measure`).
    time_budget_s: float | None = None
    # Causal LMs: mix this many texts the teacher writes itself into the training text (`vbp.workflows.teacher_text`).
    # None (the default): for causal LMs about as many as the training sentences (48 to 240, fewer under a tight
    # budget), because distilling on the user's text alone narrows the model to that text; 0 for other models,
    # which cannot write.
    teacher_text: int | None = None

    def differences(self, saved: dict) -> list[str]:
        """Names of the options that differ from a checkpoint's saved config (those that change the result); a data
        fingerprint only where both record one."""
        unknown = lambda k, v: k == "data_fingerprint" and None in (v, saved[k])  # noqa: E731
        return [k for k, v in asdict(self).items() if k in saved and saved[k] != v and not unknown(k, v)]

    def validate(self) -> None:
        if self.epochs is None and self.time_budget_s is None:
            raise VbpError("give a number of epochs, or a time budget to fit them to")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise VbpError("epochs and batch size must be at least 1")
        if self.time_budget_s is not None and not 0 < self.time_budget_s < math.inf:
            raise VbpError(f"the time budget must be a positive number of minutes, got {self.time_budget_s / 60:g}")
        if self.teacher_text is not None and (isinstance(self.teacher_text, bool) or self.teacher_text < 0):
            raise VbpError(f"--teacher-text is a number of texts, at least 0, got {self.teacher_text}")
        if self.max_batches is not None and self.max_batches < 1:
            raise VbpError(f"num_batches must be at least 1, got {self.max_batches}")
        if not 0 <= self.kd_alpha <= 1 or not 0 < self.kd_temperature < math.inf:
            raise VbpError(
                "--kd-alpha must be in [0, 1] and --kd-temperature a positive finite number (e.g. 2), got "
                f"{self.kd_alpha} and {self.kd_temperature}"
            )
        if not (0 < self.lr < 1) or self.lr != self.lr:
            raise VbpError(f"the learning rate must be a positive number below 1 (typical: 1e-5 to 1e-3), got {self.lr}")
        if self.kd_loss not in HIDDEN_LOSSES:
            raise VbpError(f"--kd-loss must be one of {', '.join(HIDDEN_LOSSES)}, got {self.kd_loss!r}")
        if not 0 <= self.kd_pooled < math.inf:
            raise VbpError(f"--kd-pooled is a weight: a finite number of at least 0, got {self.kd_pooled}")
        if self.train_only not in TRAIN_ONLY:
            raise VbpError(f"--train-only must be one of {', '.join(TRAIN_ONLY)}, got {self.train_only!r}")

    def distillation(self, target: str) -> Distillation:
        """The loss for a model whose outputs are `target` (see `vbp.workflows.distill.output_target`)."""
        layers = target in ("hidden", "tokens") if self.kd_layers is None else self.kd_layers
        return Distillation(
            target, self.kd_alpha, self.kd_temperature, self.label_smoothing, self.kd_loss, self.kd_pooled, layers
        )


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a loader worker from torch's per-worker seed (itself from the loader's
    seeded generator), so random augmentations repeat run to run."""
    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _split(batch) -> tuple:
    """(model inputs, labels or None): an (images, labels) pair, or a tokenizer's output (no labels)."""
    return (batch, None) if isinstance(batch, Mapping) else (batch[0], batch[1])


def _forward(model: nn.Module, inputs, device: torch.device, hidden_states: bool = False):
    """model(inputs) on `device`; a tokenizer's output as keyword arguments, with every block's output when
    `hidden_states`."""
    if not isinstance(inputs, Mapping):
        return model(inputs.to(device, non_blocking=True))
    placed = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return model(**placed, output_hidden_states=True) if hidden_states else model(**placed)


def _real_tokens(inputs, device: torch.device) -> torch.Tensor | None:
    """[B, T] bool of the real tokens of a text batch (all of them without an attention mask); None for images."""
    if not isinstance(inputs, Mapping):
        return None
    mask = padding_mask(inputs, device)
    return mask if mask is not None else torch.ones_like(inputs["input_ids"], dtype=torch.bool, device=device)


def _target_of(student: nn.Module, teacher: nn.Module | None, inputs, device: torch.device) -> str:
    """What the student outputs (see `output_target`), checked against the teacher's output on one input."""
    one = first_rows(inputs, 1)
    with torch.inference_mode():
        s = _forward(student, one, device)
        target = output_target(s)
        if teacher is None:
            return target
        t = _forward(teacher, one, device)
    if output_target(t) != target or _compared(s, target).shape != _compared(t, target).shape:
        raise VbpError(
            f"the teacher's outputs ({output_target(t)} {tuple(_compared(t, output_target(t)).shape[1:])}) do not match "
            f"the student's ({target} {tuple(_compared(s, target).shape[1:])}): distil from the model the student was "
            "pruned from"
        )
    return target


def output_kind(student: nn.Module, train: Dataset) -> tuple[str, bool]:
    """(what the student outputs, one of `vbp.workflows.distill.TARGETS`; whether `train` has labels), from one
    forward pass of its first item: what decides which distillation options mean anything."""
    inputs, labels = _split(collate_for(train)([train[0]]))
    return _target_of(student, None, inputs, model_device(student)), labels is not None


def _compared(output, target: str) -> torch.Tensor:
    """The output the teacher and the student must agree on in shape: logits, or the last hidden state."""
    if isinstance(output, torch.Tensor):
        return output
    return output.last_hidden_state if target == "hidden" else output.logits


def _train_only(student: nn.Module, which: str) -> list[nn.Parameter]:
    """Freeze every parameter but the pruned MLP sites' (which="mlp"); returns the parameters left frozen."""
    if which == "all":
        return []
    tuned = {id(p) for site in find_sites(student) for layer in (*site.producer_layers, site.consumer_layer)
             for p in layer.parameters()}
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in tuned]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def finetune(
    student: nn.Module,
    train: Dataset,
    val: Dataset | None,
    config: FinetuneConfig,
    teacher: nn.Module | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    accept_changes: bool = False,
) -> list[dict]:
    """Train `student` in place on `train` ((image, label) items, or `Sentences`); returns the per-epoch history.

    The loss: distillation from `teacher` when config.kd_alpha > 0 (put in eval mode, run without gradients),
    by what the student outputs (see `vbp.workflows.distill`), plus the label loss where the data has labels;
    without a teacher, the label loss alone (unlabelled data is refused). config.train_only="mlp" tunes only
    the MLP sites' layers.
    Each history row: epoch, train_loss, lr, seconds, and on `val` when given top1/top5 (image classifiers) or
    `TextReference.compare` against the teacher (text models, rank 0). With `output`,
    writes output/checkpoint.pt every epoch and output/log.json + log.csv; `resume` continues from the
    checkpoint there, refusing options that differ from the checkpoint's unless `accept_changes`.
    """
    config.validate()
    frozen = _train_only(student, config.train_only)
    try:
        return _train(student, train, val, config, teacher, output, resume, progress, accept_changes)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _train(
    student: nn.Module,
    train: Dataset,
    val: Dataset | None,
    config: FinetuneConfig,
    teacher: nn.Module | None,
    output: str | Path | None,
    resume: bool,
    progress: bool,
    accept_changes: bool,
) -> list[dict]:
    """`finetune` with the trainable parameters set."""
    started = _clock()
    rank, world = rank_and_world()
    device = model_device(student)
    talk = progress and rank == 0
    say = _say if talk else lambda *_: None
    use_kd = teacher is not None and config.kd_alpha > 0
    if use_kd:
        teacher.eval()
    inputs, labels = _split(collate_for(train)([train[0]]))
    labelled = labels is not None
    target = _target_of(student, teacher if use_kd else None, inputs, device)
    if not use_kd and (not labelled or target != "logits"):
        raise VbpError(
            "this data has no labels to train on: fine-tune by distillation from the unpruned model (a teacher "
            "and kd_alpha > 0; leave out --no-kd)"
        )
    if target in ("hidden", "tokens") and not isinstance(inputs, Mapping):
        raise VbpError("a text model is fine-tuned on sentences: give a text file (--data FILE.txt), not synthetic ids")
    if target != "logits" and val is not None and len(val) < 2:
        raise VbpError(f"the validation text has {len(val)} sentence: give at least two (neighbours are compared)")
    distillation = config.distillation(target)
    if use_kd and distillation.layers and not isinstance(inputs, Mapping):
        raise VbpError("matching every block's output (--kd-layers) is for Hugging Face text models; leave it out")
    causal = use_kd and target == "tokens" and is_causal_lm(student)
    if config.teacher_text and not causal:
        what = f"this model outputs {target}" if use_kd else "this run has no teacher"
        raise VbpError(f"--teacher-text means nothing here: only a causal LM's unpruned model writes text, and {what}")

    ckpt_path = Path(output) / CHECKPOINT if output else None
    state = _read_checkpoint(ckpt_path, config, device, accept_changes) if resume else None
    spent = state.get("elapsed", sum(r["seconds"] for r in state["history"])) if state else 0.0
    elapsed = lambda: spent + _clock() - started  # noqa: E731  (the budget's clock)

    held_out, teacher_count = [], 0
    if causal:
        train, held_out, teacher_count = _with_teacher_text(train, teacher, config, state, output, elapsed, say,
                                                            rank, world)

    generator = torch.Generator().manual_seed(config.seed)
    worker_seeds = torch.Generator()
    sampler = (
        DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        if world > 1
        else RandomSampler(train, generator=generator)
    )
    train_loader = DataLoader(
        train,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=loader_workers(train),
        drop_last=len(train) >= config.batch_size,
        # workers' random augmentations follow the seed too
        generator=worker_seeds,
        worker_init_fn=_seed_worker,
        collate_fn=collate_for(train),
    )
    steps_per_epoch = min(len(train_loader), config.max_batches or len(train_loader))
    from timm.optim import create_optimizer_v2  # timm: imported when used
    from timm.scheduler import CosineLRScheduler

    optimizer = _optimizer(create_optimizer_v2, student, config)
    # an encoder's pooler (and, per target, other heads) reaches no loss: DDP must not wait for its gradients
    model = DistributedDataParallel(student, find_unused_parameters=target != "logits") if world > 1 else student
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    train_step = _Step(model, student, teacher if use_kd else None, distillation, target, config, device, autocast)

    # validation: text is measured against the teacher, whose side is taken once, on rank 0 (neighbours span
    # every sentence); a causal LM token by token, on the validation text and on held-out teacher text
    text_val = val is not None and isinstance(val[0], str)
    reference_started = _clock()
    references = []
    if rank == 0 and text_val:
        references.append(
            teacher_text_module.TokenReference(teacher, loader(val, config.batch_size))
            if causal
            else TextReference(teacher, loader(val, config.batch_size * 2))
        )
    if rank == 0 and held_out:
        held = Sentences(held_out, collate_for(train).tokenizer)
        references.append(
            teacher_text_module.TokenReference(teacher, loader(held, config.batch_size), embeddings=False,
                                               prefix="general_")
        )
    reference_s = _clock() - reference_started
    best_key = _best_key(causal, text_val, bool(held_out), val is not None and not text_val)
    keep_best = config.time_budget_s is not None and best_key is not None

    budget = config.time_budget_s
    # the first steps of a new run are timed (the first warms up): the projected duration is said after them,
    # and with a budget the steps and the schedule are fitted to what is left; until then its learning rate
    # stays where the warm-up starts
    timing = state is None and (progress or budget is not None)  # on every rank: the measures are merged
    write_s = _write_seconds(student, optimizer)
    scheduler = None
    if budget is None or state is not None:
        plan = state["plan"] if budget is not None else _plan(config, state, steps_per_epoch, write_s)
        scheduler = _scheduler(CosineLRScheduler, optimizer, config, plan, steps_per_epoch)
    else:  # fitted after the timed steps
        cap = config.epochs * steps_per_epoch if config.epochs is not None else 2**62
        plan = {"steps": cap, "eval_every": 2**62, "offset": 0, "step_s": None, "validation_s": 0.0,
                "write_s": write_s, "budget_s": budget}
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 1e-2

    run = _Run(plan=plan, write_s=plan["write_s"], teacher_text=teacher_count)
    rng = None
    if state is not None:
        try:
            student.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise VbpError(f"{ckpt_path} is a checkpoint of another model: {exc}") from exc
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        run.history, run.step = state["history"], state.get("step", state["epoch"] * steps_per_epoch)
        run.stopped, run.best = state.get("stopped"), state.get("best", run.best)
        rng = state.get("torch_rng")
        if talk:
            say(_projection(config, plan, None, run.step, steps_per_epoch, elapsed(), resumed=True))
    run.evaluated = run.step

    def close_round(epoch_generator: torch.Tensor) -> None:
        """Validate, keep the best weights, and write the checkpoint and the log: the end of a round of steps."""
        row = {"epoch": _epochs_done(run.step, steps_per_epoch), "step": run.step}
        measures = {}
        if references:
            student.eval()
            for reference in references:
                measures.update(reference.compare(student))
        elif val is not None and not text_val:
            measures = accuracy(student, loader(shard(val), config.batch_size * 2), progress=progress and rank == 0)
        timing = {"train_loss": run.loss / max(run.seen, 1), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": run.seconds}
        row.update(_ordered(measures, timing, causal))
        row["elapsed"] = elapsed()
        run.history.append(row)
        run.loss, run.seen, run.seconds, run.evaluated = 0.0, 0, 0.0, run.step
        if keep_best:
            if _agree(_better(row.get(best_key), run.best["value"], best_key), device, world):
                run.best = {"index": len(run.history) - 1, "value": row.get(best_key)}
                run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
                if output and rank == 0:
                    save_pruned(student, Path(output) / "model.safetensors")
        _mark_log(run, budget is not None, keep_best)
        if talk:
            say(_describe(row, math.ceil(run.plan["steps"] / steps_per_epoch), run.plan["steps"],
                          best_key if keep_best else None))
        written = _clock()
        if output and rank == 0:
            generator_state = generator.get_state() if run.step % steps_per_epoch == 0 else epoch_generator
            _write_epoch(Path(output), student, optimizer, scheduler, generator_state, run.history, config,
                         _progress(run, elapsed(), device, steps_per_epoch))
            run.write_s = _clock() - written
        run.last = _clock()

    run.last, step_times, parts = _clock(), [], []

    def measured_now() -> dict:
        """What the timed steps measured, the slowest rank's (every rank follows one plan)."""
        return _slowest(_timing(parts or [(0.0, step_times[0], 0.0)], step_times, config, train, device), device, world)

    def fit(room: bool):
        """Fit the plan to what is left of the budget after the steps done (`room`: or plan none more); returns
        its scheduler and the measures it was fitted with."""
        measured = measured_now()
        validation_s = _validation_seconds(reference_s, references, measured, val, text_val)
        plan = _fit(config, measured, steps_per_epoch, validation_s, write_s, elapsed(), run.step, room)
        run.plan = _from_rank0(plan, world)
        return _scheduler(CosineLRScheduler, optimizer, config, run.plan, steps_per_epoch), measured

    while run.step < run.plan["steps"] and run.stopped is None:
        epoch, offset = divmod(run.step, steps_per_epoch)
        if world > 1:
            sampler.set_epoch(epoch)
        # seeded per epoch and rank (dropout, drop-path, loader workers), so a resumed run draws what an
        # uninterrupted one would, on every device; a run resumed mid-epoch takes the RNG where it was
        torch.manual_seed(config.seed + 1 + epoch * world + rank)
        worker_seeds.manual_seed(config.seed + 1 + epoch)
        if offset and rng is not None:
            _set_rng(rng, device)
        rng = None
        epoch_generator = generator.get_state()  # this epoch's order is drawn from it
        # dropout regularises learning labels; matching a deterministic teacher alone, it only adds noise
        model.train(labelled)
        end = min(steps_per_epoch, run.plan["steps"] - epoch * steps_per_epoch)
        epochs = math.ceil(run.plan["steps"] / steps_per_epoch) if run.plan["steps"] < 2**62 else "?"
        bar = tqdm(total=end, initial=offset, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress or rank != 0)
        try:
            for batch in itertools.islice(train_loader, offset, end):
                if budget is not None and (step_times or run.plan["step_s"]):
                    recent = step_times[-TIMED_STEPS:]
                    per_step = sum(recent) / len(recent) if recent else run.plan["step_s"]
                    closing = run.plan["validation_s"] + run.write_s
                    if _agree(elapsed() + per_step + closing > budget, device, world):
                        if scheduler is None:  # still timing: the plan is what was done
                            scheduler, _ = fit(room=False)
                        run.stopped = "time budget"
                        break
                inputs, labels = _split(batch)
                timed = timing and run.step < 1 + TIMED_STEPS
                loss_value = train_step(inputs, labels, optimizer, parts if timed and run.step > 0 else None)
                if not math.isfinite(loss_value):
                    raise VbpError(f"the training loss became {loss_value} in epoch {epoch + 1}, step {run.step}; lower --lr")
                run.step += 1
                if scheduler is not None:
                    scheduler.step_update(run.step - run.plan["offset"])
                run.loss += loss_value * batch_size(inputs)
                run.seen += batch_size(inputs)
                now = _clock()
                step_times.append(now - run.last)
                run.seconds += now - run.last
                run.last = now
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if timed and (run.step == 1 + TIMED_STEPS or run.step == run.plan["steps"]):
                    if scheduler is None:
                        scheduler, measured = fit(room=True)
                        if run.plan["more"] == 0 and run.plan["short"]:
                            run.stopped = "time budget"  # nothing fits after the timed steps
                    else:
                        measured = measured_now()
                        run.plan.update(step_s=measured["step_s"], validation_s=_validation_seconds(
                            reference_s, references, measured, val, text_val))
                    if talk:
                        say(_projection(config, run.plan, measured, run.step, steps_per_epoch, elapsed(), resumed=False))
                    end = min(end, run.plan["steps"] - epoch * steps_per_epoch)
                    bar.total = end
                if run.step == run.plan["steps"] and budget is not None and run.stopped is None:
                    run.stopped = "end of schedule"
                if run.step % run.plan["eval_every"] == 0 or run.step == run.plan["steps"]:
                    bar.clear()
                    close_round(epoch_generator)
                    model.train(labelled)
                if run.step - epoch * steps_per_epoch >= end:
                    break
        finally:  # before an error is said
            bar.close()
        if run.stopped == "time budget" and run.step > run.evaluated:
            close_round(epoch_generator)
        elif run.stopped == "time budget" and run.history:  # right after a validation
            _mark_log(run, True, keep_best)
            if output and rank == 0:
                _write_log(Path(output), run.history)
    if keep_best and run.best["index"] is not None and run.best["index"] != len(run.history) - 1:
        student.load_state_dict(run.best_state if run.best_state is not None else _saved_weights(output))
    if talk and budget is not None and run.history:
        say(_ending(run, config, best_key if keep_best else None))
    return run.history


@dataclass
class _Run:
    """What the fine-tuning loop keeps between rounds (a round: the steps between two validations)."""

    plan: dict
    write_s: float = 0.0  # the last checkpoint's write
    history: list = field(default_factory=list)
    step: int = 0  # optimizer steps done
    evaluated: int = 0  # the step of the last validation
    stopped: str | None = None  # "time budget" or "end of schedule" (runs with a budget)
    best: dict = field(default_factory=lambda: {"index": None, "value": None})  # the kept row and its measure
    best_state: dict | None = None  # the kept weights (CPU), when kept in this process
    teacher_text: int = 0  # texts the teacher wrote into the training data
    loss: float = 0.0  # this round's summed loss, items, training seconds
    seen: int = 0
    seconds: float = 0.0
    last: float = 0.0  # the clock at the end of the last step


class _Step:
    """One training step: the teacher's outputs, the student's loss and backward, clipping and the optimizer's
    step; in parts, so that a new run's first steps can be timed in each."""

    def __init__(self, model, student, teacher, distillation: Distillation, target: str, config, device, autocast):
        self.model, self.student, self.teacher, self.distillation = model, student, teacher, distillation
        self.target, self.config, self.device, self.autocast = target, config, device, autocast

    def teacher_output(self, inputs):
        if self.teacher is None:
            return None
        with self.autocast, torch.no_grad():
            return _forward(self.teacher, inputs, self.device, self.distillation.layers)

    def backward(self, inputs, labels, teacher_output, optimizer) -> float:
        """The student's loss on `inputs`; its gradients when it is finite. Returns the loss."""
        labels = labels.to(self.device, non_blocking=True) if labels is not None else None
        with self.autocast:
            student_output = _forward(self.model, inputs, self.device, self.distillation.layers)
            if teacher_output is not None:
                real = _real_tokens(inputs, self.device)
                loss = self.distillation.loss(student_output, teacher_output, real, labels)
            else:
                logits = _compared(student_output, self.target).float()
                loss = nn.functional.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        loss_value = loss.item()
        if math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        return loss_value

    def update(self, optimizer) -> None:
        if self.config.clip_grad:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.config.clip_grad)
        optimizer.step()

    def __call__(self, inputs, labels, optimizer, parts: list | None = None) -> float:
        """One step; with `parts`, its three parts' seconds are appended to it (the device synchronised)."""
        clock = [] if parts is not None else None

        def tick():
            if clock is not None:
                _sync(self.device)
                clock.append(_clock())

        tick()
        teacher_output = self.teacher_output(inputs)
        tick()
        loss_value = self.backward(inputs, labels, teacher_output, optimizer)
        tick()
        if math.isfinite(loss_value):
            self.update(optimizer)
        tick()
        if clock is not None:
            parts.append((clock[1] - clock[0] if self.teacher is not None else 0.0, clock[2] - clock[1],
                          clock[3] - clock[2]))
        return loss_value


def _optimizer(create, student: nn.Module, config: FinetuneConfig):
    """AdamW (timm's parameter groups: no weight decay on biases and norms), fused where torch has a fused kernel
    for the parameters' device and type: on a CPU it steps a 135M-parameter model in about a seventh of the time
    of the per-tensor loop (0.2 s against 1.5 s here), a tenth of a distillation step."""
    try:
        return create(student, "adamw", lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # parameters of a device or type without the fused kernel
        return create(student, "adamw", lr=config.lr, weight_decay=config.weight_decay)


def _say(line: str | None) -> None:
    if line:
        tqdm.write(line, file=sys.stderr)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing(parts: list, step_times: list, config: FinetuneConfig, train: Dataset, device) -> dict:
    """What the timed steps measured: seconds per step (the mean of the steps after the first, from the end of
    one to the end of the next: data included), per part (teacher forward; student forward, loss and backward;
    clipping and the optimizer's step), the batch, and the peak memory in bytes (the CUDA allocator's, or the
    process's resident set on the CPU)."""
    timed = step_times[1 : 1 + TIMED_STEPS] or step_times[:1]
    teacher_s, student_s, optimizer_s = (sum(p[i] for p in parts) / len(parts) for i in range(3))
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"step_s": sum(timed) / len(timed), "teacher_s": teacher_s, "student_s": student_s,
            "optimizer_s": optimizer_s, "batch": min(config.batch_size, len(train)), "memory_bytes": float(memory)}


def _slowest(measured: dict, device, world: int) -> dict:
    """Under torch.distributed, every field of the timed steps' measures at its largest over the ranks."""
    if world == 1:
        return measured
    import torch.distributed as dist

    keys = sorted(measured)
    values = torch.tensor([float(measured[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return {k: (int(v) if k == "batch" else float(v)) for k, v in zip(keys, values.tolist())}


def _from_rank0(value, world: int):
    """`value` as rank 0 has it, on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(flag: bool, device, world: int) -> bool:
    """True on every rank when `flag` is on any rank (a budget spent, a better measure on rank 0)."""
    if world == 1:
        return bool(flag)
    import torch.distributed as dist

    value = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _validation_seconds(reference_s: float, references: list, measured: dict, val, text_val: bool) -> float:
    """About how long one validation takes: a text comparison runs what taking the teacher's side took (twice
    for a causal LM's token measures: the teacher runs again beside the student); images, a forward pass per
    image at the timed steps' speed."""
    if references:
        tokens = any(isinstance(r, teacher_text_module.TokenReference) for r in references)
        return reference_s * (2 if tokens else 1)
    if val is not None and not text_val:
        forward = measured["teacher_s"] or measured["student_s"] / 3
        return len(val) * forward / measured["batch"]
    return 0.0


def _write_seconds(student: nn.Module, optimizer) -> float:
    """About how long writing a checkpoint (weights, AdamW's two moments) and the kept model takes, at
    WRITE_BYTES_PER_S; replaced by the measured time after the first one."""
    weights = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    moments = sum(2 * p.numel() * 4 for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
    return (2 * weights + moments) / WRITE_BYTES_PER_S


def _evaluations(start: int, end: int, every: int) -> int:
    """The validations of a run from step `start` to `end`: every `every` steps and at the end."""
    return end // every - start // every + (1 if end % every and end > start else 0)


def _plan(config: FinetuneConfig, state: dict | None, steps_per_epoch: int, write_s: float) -> dict:
    """The plan of a run without a time budget: every epoch's steps, a validation after each (with the seconds
    a step took when the run started, for a resumed one)."""
    saved = (state or {}).get("plan") or {}
    return {"steps": config.epochs * steps_per_epoch, "eval_every": steps_per_epoch, "offset": 0,
            "step_s": saved.get("step_s"), "validation_s": saved.get("validation_s", 0.0), "write_s": write_s,
            "budget_s": None}


def _fit(config: FinetuneConfig, measured: dict, steps_per_epoch: int, validation_s: float, write_s: float,
         elapsed: float, step: int, room: bool = True) -> dict:
    """The plan of a run with a time budget, after its first `step` (timed) steps: the steps that fit what is
    left of it at the measured seconds per step, with up to MAX_EVALS validations and checkpoints taking about
    EVAL_SHARE of it (each `validation_s` + `write_s`), at most `config.epochs` epochs in all (none more without
    `room`: the budget ran out while timing). Its schedule (warm-up and cosine) runs over the steps after the timed
    ones (`offset`); `more` says how many that is, `short` whether the budget (not --epochs) set it."""
    available, step_s = config.time_budget_s - elapsed, measured["step_s"]
    closing = validation_s + write_s
    evals = max(1, min(MAX_EVALS, int(EVAL_SHARE * available // closing))) if closing > 0 else MAX_EVALS
    more = int((available - evals * closing) // step_s)
    if more < evals:  # a validation after every step, as many as fit
        more = evals = int(available // (step_s + closing))
    fits = max(more, 0) if room else 0
    cap = config.epochs * steps_per_epoch - step if config.epochs is not None else fits
    more = min(fits, cap)
    steps = step + more
    return {"steps": steps, "eval_every": math.ceil(steps / max(min(evals, more), 1)), "offset": step, "more": more,
            "short": not room or config.epochs is None or fits < cap,  # the budget, not --epochs, set the plan
            "step_s": step_s, "validation_s": validation_s, "write_s": write_s, "budget_s": config.time_budget_s,
            "available_s": available}


def _scheduler(scheduler_class, optimizer, config: FinetuneConfig, plan: dict, steps_per_epoch: int):
    """Linear warm-up from 1% of the learning rate and cosine decay to 1% of it over the plan's steps after its
    offset (the timed steps of a run with a budget), stepped per step."""
    steps = max(plan["steps"] - plan["offset"], 1)
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:  # the peak the schedule scales (the timed steps ran below it)
        group["lr"] = config.lr
    scheduler = scheduler_class(
        optimizer,
        t_initial=steps,
        lr_min=config.lr * 1e-2,
        # at most a tenth of the run: a one-epoch run is not all warm-up
        warmup_t=min(int(config.warmup_epochs * steps_per_epoch), steps // 10),
        warmup_lr_init=config.lr * 1e-2,
        t_in_epochs=False,
    )
    if plan["offset"] and plan["steps"] > plan["offset"]:
        scheduler.step_update(0)  # the learning rate of its first step, after the timed ones
    elif plan["offset"]:  # no step after the timed ones: their rate stays what the log shows
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
    return scheduler


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _projection(config, plan: dict, measured: dict | None, step: int, steps_per_epoch: int, elapsed: float,
                resumed: bool) -> str | None:
    """The line said when the plan is known: after a new run's timed steps (with a budget: how the plan was
    fitted to it), or when a run resumes (from the seconds per step measured when it started)."""
    steps, every, step_s = plan["steps"], plan["eval_every"], plan["step_s"]
    if step_s is None:
        return None
    closing = plan["validation_s"] + plan["write_s"]
    left, evals = steps - step, _evaluations(step, steps, every)
    sums = (f"{_count(left, 'step')} ({left / steps_per_epoch:.2f} epochs) x {step_s:.2f} s + "
            f"{_count(evals, 'validation')} and checkpoint{'s' * (evals != 1)} x {closing:.1f} s = "
            f"{_minutes(left * step_s + evals * closing)}")
    if resumed:
        line = f"resuming at step {step} of {steps}: {sums} more (steps timed when the run started)"
        if config.time_budget_s is not None:
            line += f"; {_minutes(config.time_budget_s - elapsed)} of the {_minutes(config.time_budget_s)} budget left"
    elif config.time_budget_s is not None:
        warmup = min(int(config.warmup_epochs * steps_per_epoch), (steps - step) // 10)
        line = (f"time budget {_minutes(config.time_budget_s)}: {_minutes(elapsed)} spent, with {step} timed steps "
                f"at the warm-up's starting learning rate; {sums} fitted to the {_minutes(plan['available_s'])} left; "
                f"then warm-up {_count(warmup, 'step')}, cosine to {config.lr * 1e-2:.1e} at step {steps}")
    else:
        evals = _evaluations(0, steps, every)
        sums = (f"{_count(steps, 'step')} ({steps / steps_per_epoch:.2f} epochs) x {step_s:.2f} s + "
                f"{_count(evals, 'validation')} and checkpoint{'s' * (evals != 1)} x {closing:.1f} s")
        line = f"projected: {sums} = {_minutes(steps * step_s + evals * closing)}"
    if measured is not None:
        teacher = f"teacher forward {measured['teacher_s']:.2f} s + " if measured["teacher_s"] else ""
        line += (f" (a step of {measured['batch']}, timed on steps 2-{step}: {teacher}student forward and backward "
                 f"{measured['student_s']:.2f} s + optimizer {measured['optimizer_s']:.2f} s; peak memory "
                 f"{measured['memory_bytes'] / 2**30:.1f} GiB)")
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _mark_log(run: _Run, budgeted: bool, keep_best: bool) -> None:
    """With a time budget, mark the kept row (the weights model.safetensors holds) and why the run ended."""
    if not budgeted:
        return
    for i, row in enumerate(run.history):
        if keep_best:
            row["kept"] = i == run.best["index"]
        row["stop"] = (run.stopped or "") if i == len(run.history) - 1 else ""


def _best_key(causal: bool, text_val: bool, held_out: bool, image_val: bool) -> str | None:
    """The measure the kept weights are chosen by: a causal LM's perplexity on the validation text (else its
    token KL on held-out teacher text), an encoder's embedding cosine, a classifier's top-1; None without
    validation."""
    if causal and text_val:
        return "perplexity"
    if causal and held_out:
        return "general_token_kl"
    return "cosine" if text_val else "top1" if image_val else None


def _better(value, best, key: str | None) -> bool:
    """Whether a validation measured `value` is at least as good as the kept one's (a tie goes to the later
    weights: trained longer, at a lower learning rate)."""
    if value is None:
        return False
    if best is None:
        return True
    return value <= best if key in ("perplexity", "general_token_kl") else value >= best


TOKEN_MEASURES = ("perplexity", "reference_perplexity", "token_kl", "top1_agreement")


def _ordered(measures: dict, timing: dict, causal: bool) -> dict:
    """A row's measures and timing in the order the log shows them: a causal LM's token measures first (on
    the validation text, then on held-out teacher text), its embedding agreement last; other models' timing
    first, then their measures."""
    if not causal:
        return {**timing, **measures}
    first = [k for k in (*TOKEN_MEASURES, *("general_" + m for m in TOKEN_MEASURES)) if k in measures]
    return {**{k: measures[k] for k in first}, **timing, **{k: v for k, v in measures.items() if k not in first}}


def _epochs_done(step: int, steps_per_epoch: int) -> int | float:
    whole, part = divmod(step, steps_per_epoch)
    return whole if part == 0 else round(step / steps_per_epoch, 3)


def _describe(row: dict, epochs: int, steps: int, best_key: str | None) -> str:
    """One printed line per validation: a causal LM's token measures, an encoder's embedding agreement, a
    classifier's accuracy; the loss and learning rate; whether these weights are kept."""
    parts = []
    if "perplexity" in row:
        parts.append(f"perplexity {row['perplexity']:.2f} (unpruned {row['reference_perplexity']:.2f}), token KL "
                     f"{row['token_kl']:.4f}, top-1 agreement {row['top1_agreement']:.3f}")
    if "general_token_kl" in row:
        parts.append(f"on held-out teacher text: perplexity {row['general_perplexity']:.2f} (unpruned "
                     f"{row['general_reference_perplexity']:.2f}), token KL {row['general_token_kl']:.4f}, top-1 "
                     f"agreement {row['general_top1_agreement']:.3f}")
    elif "cosine" in row and "perplexity" not in row:
        parts.append(f"cosine {row['cosine']:.4f}, neighbour agreement {row['nn_agreement']:.3f}")
    if "top1" in row:
        parts.append(f"top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%")
    parts.append(f"loss {row['train_loss']:.4g}, lr {row['lr']:.2e}, {_minutes(row['elapsed'])}")
    kept = " [kept]" if best_key and row.get("kept") else ""
    return f"step {row['step']}/{steps} (epoch {row['epoch']:g}/{epochs}): " + "; ".join(parts) + kept


def _ending(run: _Run, config: FinetuneConfig, best_key: str | None) -> str:
    """The last line of a run with a time budget: why it ended, and which weights it kept."""
    last, planned = run.history[-1], run.plan["steps"]
    budget = _minutes(config.time_budget_s)
    if run.plan.get("more") == 0 and run.plan.get("short"):
        fits = run.plan["step_s"] * 10 + run.plan["validation_s"] + run.plan["write_s"] + last["elapsed"]
        first = "step" if run.step == 1 else f"{run.step} steps"
        return (f"warning: the {budget} time budget left no time to train after timing the first {first} "
                f"(at the warm-up's starting learning rate, 1% of --lr), {_minutes(last['elapsed'])} in all: the model "
                f"has barely changed; give --time-budget {math.ceil(fits / 6) / 10:g} or more for 10 steps more")
    if run.stopped == "time budget":
        line = (f"stopped after {run.step} of {planned} planned steps: another would not have fitted the {budget} "
                f"budget ({_minutes(last['elapsed'])} spent)")
    else:
        line = f"ran the {planned} planned steps in {_minutes(last['elapsed'])} of the {budget} budget"
    if best_key is None:
        return line + "; kept the last weights (no validation to choose by)"
    kept = run.history[run.best["index"]]
    return line + f"; kept the weights of step {kept['step']} ({best_key} {kept[best_key]:.4g}, the best validated)"


def _get_rng(device) -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng(rng: dict, device) -> None:
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _saved_weights(output) -> dict:
    """The weights of output/model.safetensors: the best of a run resumed after they were written."""
    from ..checkpoint import FORMAT

    return read_safetensors(Path(output) / "model.safetensors", FORMAT, "pruned model")[0]


def _with_teacher_text(train, teacher, config: FinetuneConfig, state, output, elapsed, say, rank: int, world: int):
    """(the training data with the teacher's texts mixed in, the held-out teacher texts, how many were mixed
    in): `config.teacher_text` texts, or the default (`teacher_text.auto_count`; a resumed run keeps what it
    started with), written by rank 0 (or read from output/teacher_text.jsonl) and shared with every rank."""
    tt = teacher_text_module
    tokenizer = collate_for(train).tokenizer
    sentences = [train[i] for i in range(len(train))]
    cache = Path(output) / tt.CACHE if output else None
    count, note = config.teacher_text, ""
    if count is None and state is not None:
        count = state.get("teacher_text_count", 0)  # a run of a vbp without teacher text had none
    elif count is None:
        budget_s = config.time_budget_s - elapsed() if config.time_budget_s is not None else None
        batch_s = _from_rank0(tt.batch_seconds(teacher) if budget_s is not None and rank == 0 else None, world)
        count = tt.auto_count(len(sentences), budget_s, batch_s)
        if count == 0:
            say(f"teacher text: none: writing {tt.BATCH} texts takes about {batch_s:.0f} s here, more than "
                f"{tt.BUDGET_SHARE:.0%} of the time budget; --teacher-text N writes N anyway")
            return train, [], 0
        note = (" (the default for causal LMs: distilled on one kind of text alone, a model narrows to it; "
                "--teacher-text 0 trains on your text alone)")
    if count == 0:
        return train, [], 0
    held = tt.held_out_count(count)
    texts = None
    if rank == 0:
        texts = tt.cached_texts(teacher, count, config.seed, cache)
        if texts is None:
            minutes = _minutes(math.ceil((count + held) / tt.BATCH) * tt.batch_seconds(teacher))
            say(f"teacher text: the unpruned model writes {count} texts of {tt.NEW_TOKENS} tokens to mix into the "
                f"{len(sentences)} training sentences, and {held} more from held-out prompts to validate on (about "
                f"{minutes}){note}")
            started = _clock()
            texts = tt.teacher_texts(teacher, tokenizer, count, config.seed, cache, progress=say is _say)
            say(f"teacher text: written in {_minutes(_clock() - started)} to {cache or 'memory'}")
        else:
            say(f"teacher text: {count} + {held} held-out texts read from {cache}{note}")
    train_texts, held_out = _from_rank0(texts, world)
    return Sentences(sentences + train_texts, tokenizer), held_out, count


def _read_checkpoint(path: Path | None, config: FinetuneConfig, device, accept_changes: bool) -> dict:
    """The checkpoint to resume from, checked against `config`: other options are refused unless
    `accept_changes`; another --train-only or time budget always (the optimizer state, or the fitted schedule,
    would not fit)."""
    if path is None or not path.exists():
        raise VbpError(f"nothing to resume: {path or 'no output folder'} has no checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, a text file, a pickle with arbitrary objects: each raises its own
        raise VbpError(
            f"{path} is not a readable fine-tuning checkpoint ({type(exc).__name__}); it may be truncated: "
            "delete it to start again without --resume"
        ) from exc
    saved = state.get("config", {})
    changed = [k for k in config.differences(saved) if k not in ("time_budget_s", "teacher_text")]
    if "data_fingerprint" in changed and not accept_changes:
        raise VbpError(
            "--resume, and the training data differs from the data the checkpoint was trained on (a file of it "
            "was changed, added or removed under the same name): resume with that data, start over (--overwrite), "
            "or accept the change (--resume-anyway)"
        )
    if "train_only" in changed:  # another set of trainable parameters: the optimizer state does not fit
        raise VbpError(
            f"--resume with --train-only {config.train_only}, and the checkpoint was made with --train-only "
            f"{saved['train_only']}: "
            "resume with the same --train-only, or start over (--overwrite)"
        )
    budget = saved.get("time_budget_s")
    if budget != config.time_budget_s:  # its schedule was fitted to the first budget
        said = lambda b: f"a time budget of {b / 60:g} min" if b is not None else "no time budget"  # noqa: E731
        raise VbpError(
            f"--resume with {said(config.time_budget_s)}, and the run was started with {said(budget)}, to which its "
            "steps and learning-rate schedule were fitted: resume with the same --time-budget (the run gets what "
            "is left of it), or start over (--overwrite)"
        )
    saved_count = state.get("teacher_text_count", 0)
    if config.teacher_text is not None and config.teacher_text != saved_count:
        changed.append("teacher_text")
        saved = {**saved, "teacher_text": saved_count}
    if changed and not accept_changes:
        now = asdict(config)
        raise VbpError(
            "--resume with other options than the checkpoint was made with: "
            + ", ".join(f"{k} (now {now[k]!r}, saved {saved[k]!r})" for k in changed)
            + "; use the same options, or accept the change (--resume-anyway)"
        )
    return state


def _progress(run: _Run, elapsed: float, device, steps_per_epoch: int) -> dict:
    """Where a run is, beside its weights, optimizer, schedule and data order: steps done (and epochs), torch's
    RNG (a run resumed mid-epoch goes on drawing from it), the plan, why it stopped, the kept row, the time
    spent and the teacher texts mixed in."""
    return {
        "torch_rng": _get_rng(device),
        "epoch": run.step // steps_per_epoch,
        "step": run.step,
        "plan": run.plan,
        "stopped": run.stopped,
        "best": run.best,
        "elapsed": elapsed,
        "teacher_text_count": run.teacher_text,
    }


def _write_epoch(output: Path, student, optimizer, scheduler, generator_state, history, config, progress: dict) -> None:
    """Write the checkpoint (atomically) and the log. generator_state: the sampler's generator at the start of the
    epoch in progress (the run resumes by drawing that epoch's order again and skipping what it did)."""
    state = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator_state,
        "history": history,
        "config": asdict(config),
        **progress,
    }
    with atomic_path(output / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    _write_log(output, history)


def _write_log(output: Path, history: list[dict]) -> None:
    write_text_atomic(output / "log.json", json.dumps(history, indent=1) + "\n")
    write_csv_atomic(output / "log.csv", history)
