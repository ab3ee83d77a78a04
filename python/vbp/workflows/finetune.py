"""Fine-tune a pruned model in timm's manner, optionally distilling from the unpruned teacher.

AdamW (no weight decay on biases and norms), cosine schedule with linear warm-up stepped per
iteration, label smoothing, gradient clipping, bf16 autocast on CUDA; DistributedDataParallel when
torch.distributed is initialised (torchrun). A checkpoint is written atomically after every epoch, and
`resume=True` continues from it to the same weights an uninterrupted run would reach.
"""

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from ..distributed import rank_and_world, shard
from ..errors import VbpError
from ..files import atomic_path, write_csv_atomic, write_text_atomic
from ..models import model_device
from .data import loader, loader_workers
from .distill import kd_loss
from .evaluate import accuracy
from .unreadable import skip_unreadable

CHECKPOINT = "checkpoint.pt"


@dataclass
class FinetuneConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0
    kd_alpha: float = 0.5  # 0 turns distillation off
    kd_temperature: float = 2.0
    seed: int = 0
    max_batches: int | None = None  # batches per epoch (--num-batches); None: the whole training set

    def differences(self, saved: dict) -> list[str]:
        """Names of the options that differ from a checkpoint's saved config (those that change the result)."""
        return [k for k, v in asdict(self).items() if k in saved and saved[k] != v]

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


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a loader worker from torch's per-worker seed (itself from the loader's
    seeded generator), so random augmentations repeat run to run."""
    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _check_teacher(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> None:
    with torch.inference_mode():
        s, t = student(images[:1]), teacher(images[:1])
    if s.shape != t.shape:
        raise VbpError(
            f"the teacher's outputs ({tuple(t.shape[1:])}) do not match the student's "
            f"({tuple(s.shape[1:])}): distil from the model the student was pruned from"
        )


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
    """Train `student` in place on `train` ((image, label) items); returns the per-epoch history.

    Each history row: epoch, train_loss, lr, seconds, and top1/top5 on `val` when given. With `output`,
    writes output/checkpoint.pt every epoch and output/log.json + log.csv; `resume` continues from the
    checkpoint there, refusing options that differ from the checkpoint's unless `accept_changes`. teacher: distil from it when config.kd_alpha > 0 (put in eval mode, run without gradients).
    """
    config.validate()
    rank, world = rank_and_world()
    device = model_device(student)
    use_kd = teacher is not None and config.kd_alpha > 0
    if use_kd:
        teacher.eval()
        _check_teacher(student, teacher, train[0][0].unsqueeze(0).to(device))

    generator = torch.Generator().manual_seed(config.seed)
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
        generator=torch.Generator().manual_seed(config.seed + 1),
        worker_init_fn=_seed_worker,
        collate_fn=skip_unreadable,
    )
    steps_per_epoch = min(len(train_loader), config.max_batches or len(train_loader))
    from timm.optim import create_optimizer_v2  # timm: imported when used
    from timm.scheduler import CosineLRScheduler

    optimizer = create_optimizer_v2(student, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=config.epochs * steps_per_epoch,
        lr_min=config.lr * 1e-2,
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.lr * 1e-2,
        t_in_epochs=False,
    )
    model = DistributedDataParallel(student) if world > 1 else student

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
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"]

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start_epoch, config.epochs):
        if world > 1:
            sampler.set_epoch(epoch)
        model.train()
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            train_loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not progress or rank != 0,
        )
        for step, (images, labels) in enumerate(bar):
            if step == steps_per_epoch:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast:
                logits = model(images)
                if use_kd:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = kd_loss(
                        logits.float(),
                        teacher_logits.float(),
                        labels,
                        config.kd_alpha,
                        config.kd_temperature,
                        config.label_smoothing,
                    )
                else:
                    loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise VbpError(f"the training loss became {loss_value} in epoch {epoch + 1}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(student.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            total_loss += loss_value * labels.shape[0]
            seen += labels.shape[0]
            bar.set_postfix(loss=f"{loss_value:.4f}")
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        if val is not None:
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
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "epoch": history[-1]["epoch"],
        "config": asdict(config),
    }
    with atomic_path(output / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    write_text_atomic(output / "log.json", json.dumps(history, indent=1) + "\n")
    write_csv_atomic(output / "log.csv", history)
