"""Fine-tune a pruned model in timm's manner, distilling from the unpruned teacher (`vbp.workflows.distill`
picks the loss from what the model outputs: logits, tokens or hidden states), with labels where the data has
them.

Data: (image, label) items, or sentences (`vbp.workflows.text.Sentences`, tokenized per batch). AdamW (no
weight decay on biases and norms), cosine schedule with linear warm-up stepped per iteration, label smoothing,
gradient clipping, bf16 autocast on CUDA; DistributedDataParallel when torch.distributed is initialised
(torchrun). A checkpoint is written atomically after every epoch, and `resume=True` continues from it to the
same weights an uninterrupted run would reach (random draws are seeded per epoch and rank; the global torch
RNG is reseeded).
"""

import json
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from ..batches import batch_size, first_rows, padding_mask
from ..distributed import rank_and_world, shard
from ..errors import VbpError
from ..families import find_sites
from ..files import atomic_path, write_csv_atomic, write_text_atomic
from ..models import model_device
from .data import collate_for, loader, loader_workers
from .distill import HIDDEN_LOSSES, Distillation, output_target
from .evaluate import accuracy
from .text import TextReference

TRAIN_ONLY = ("all", "mlp")  # --train-only: every parameter, or only those of the pruned MLP sites

CHECKPOINT = "checkpoint.pt"


@dataclass
class FinetuneConfig:
    epochs: int = 10
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

    def differences(self, saved: dict) -> list[str]:
        """Names of the options that differ from a checkpoint's saved config (those that change the result); a data
        fingerprint only where both record one."""
        unknown = lambda k, v: k == "data_fingerprint" and None in (v, saved[k])  # noqa: E731
        return [k for k, v in asdict(self).items() if k in saved and saved[k] != v and not unknown(k, v)]

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise VbpError("epochs and batch size must be at least 1")
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
    rank, world = rank_and_world()
    device = model_device(student)
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

    optimizer = create_optimizer_v2(student, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=config.epochs * steps_per_epoch,
        lr_min=config.lr * 1e-2,
        # at most a tenth of the run: a one-epoch run is not all warm-up
        warmup_t=min(int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch // 10),
        warmup_lr_init=config.lr * 1e-2,
        t_in_epochs=False,
    )
    # an encoder's pooler (and, per target, other heads) reaches no loss: DDP must not wait for its gradients
    model = DistributedDataParallel(student, find_unused_parameters=target != "logits") if world > 1 else student

    history, start_epoch = [], 0
    ckpt_path = Path(output) / CHECKPOINT if output else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise VbpError(f"nothing to resume: {ckpt_path or 'no output folder'} has no checkpoint")
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
        except Exception as exc:  # truncated zip, a text file, a pickle with arbitrary objects: each raises its own
            raise VbpError(
                f"{ckpt_path} is not a readable fine-tuning checkpoint ({type(exc).__name__}); it may be truncated: "
                "delete it to start again without --resume"
            ) from exc
        saved = state.get("config", {})
        changed = config.differences(saved)
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
        if changed and not accept_changes:
            now = asdict(config)
            raise VbpError(
                "--resume with other options than the checkpoint was made with: "
                + ", ".join(f"{k} (now {now[k]!r}, saved {saved[k]!r})" for k in changed)
                + "; use the same options, or accept the change (--resume-anyway)"
            )
        try:
            student.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise VbpError(f"{ckpt_path} is a checkpoint of another model: {exc}") from exc
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history, start_epoch = state["history"], state["epoch"]
    # text: measured against the teacher, whose side is taken once, on rank 0 (neighbours span every sentence)
    text_val = val is not None and isinstance(val[0], str)
    text_reference = TextReference(teacher, loader(val, config.batch_size * 2)) if text_val and rank == 0 else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start_epoch, config.epochs):
        if world > 1:
            sampler.set_epoch(epoch)
        # seeded per epoch and rank (dropout, drop-path, loader workers), so a resumed run draws what an
        # uninterrupted one would, on every device
        torch.manual_seed(config.seed + 1 + epoch * world + rank)
        worker_seeds.manual_seed(config.seed + 1 + epoch)
        # dropout regularises learning labels; matching a deterministic teacher alone, it only adds noise
        model.train(labelled)
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            train_loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not progress or rank != 0,
        )
        for step, batch in enumerate(bar):
            if step == steps_per_epoch:
                break
            inputs, labels = _split(batch)
            labels = labels.to(device, non_blocking=True) if labels is not None else None
            with autocast:
                student_output = _forward(model, inputs, device, distillation.layers)
                if use_kd:
                    with torch.no_grad():
                        teacher_output = _forward(teacher, inputs, device, distillation.layers)
                    loss = distillation.loss(student_output, teacher_output, _real_tokens(inputs, device), labels)
                else:
                    logits = _compared(student_output, target).float()
                    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise VbpError(f"the training loss became {loss_value} in epoch {epoch + 1}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(student.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            total_loss += loss_value * batch_size(inputs)
            seen += batch_size(inputs)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        if text_reference is not None:
            student.eval()
            row.update(text_reference.compare(student))
        elif val is not None and not text_val:
            row.update(accuracy(student, loader(shard(val), config.batch_size * 2), progress=progress and rank == 0))
        history.append(row)
        if output and rank == 0:
            _write_epoch(Path(output), student, optimizer, scheduler, generator, history, config)
    return history


def _write_epoch(output: Path, student, optimizer, scheduler, generator, history, config) -> None:
    state = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "history": history,
        "epoch": history[-1]["epoch"],
        "config": asdict(config),
    }
    with atomic_path(output / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    write_text_atomic(output / "log.json", json.dumps(history, indent=1) + "\n")
    write_csv_atomic(output / "log.csv", history)
