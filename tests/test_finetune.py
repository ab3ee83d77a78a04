"""Fine-tuning: it learns, resumes exactly, refuses a mismatched teacher, and runs under DDP (gloo, 2 processes)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_torchrun
from torch.utils.data import Subset

import vbp
from vbp.workflows import finetune as finetune_module
from vbp.workflows.data import loader
from vbp.workflows.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def digits_pruned():
    """The embedded digits ViT and a copy pruned hard (70%, random criterion) so there is something to recover."""
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, loader(vbp.digits_split("train"), 512), progress=False)
    pruned = vbp.prune(
        copy.deepcopy(model), vbp.select(stats, 0.7, criterion="random", seed=1), stats, compensation="none"
    )
    return model, pruned


def test_a_few_epochs_lower_the_loss(digits_pruned):
    teacher, student = copy.deepcopy(digits_pruned[0]), copy.deepcopy(digits_pruned[1])
    train = Subset(vbp.digits_split("train"), range(256))
    images, labels = vbp.digits_split("train").tensors
    with torch.no_grad():
        before = F.cross_entropy(student(images), labels).item()
    finetune(student, train, None, FinetuneConfig(epochs=3, batch_size=32, lr=1e-3), teacher=teacher, progress=False)
    with torch.no_grad():
        after = F.cross_entropy(student(images), labels).item()
    assert after < before


def test_resume_reaches_the_same_weights(digits_pruned, tmp_path, monkeypatch):
    train, val = Subset(vbp.digits_split("train"), range(200)), Subset(vbp.digits_split("test"), range(50))
    config = FinetuneConfig(epochs=3, batch_size=32, lr=1e-3)
    teacher = digits_pruned[0]
    straight = copy.deepcopy(digits_pruned[1])
    history = finetune(straight, train, val, config, teacher=teacher, output=tmp_path / "a", progress=False)

    write_epoch = finetune_module._write_epoch

    def write_then_die(output, *args):
        write_epoch(output, *args)
        if args[4][-1]["epoch"] == 2:  # history
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "_write_epoch", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            copy.deepcopy(digits_pruned[1]), train, val, config, teacher=teacher, output=tmp_path / "b", progress=False
        )
    monkeypatch.setattr(finetune_module, "_write_epoch", write_epoch)
    resumed = copy.deepcopy(digits_pruned[1])
    resumed_history = finetune(
        resumed, train, val, config, teacher=teacher, output=tmp_path / "b", resume=True, progress=False
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in history]
    assert json.loads((tmp_path / "b" / "log.json").read_text())[-1]["epoch"] == 3


def test_teacher_with_other_classes_and_foreign_checkpoint_are_refused(digits_pruned, tmp_path):
    teacher = vbp.create_model("vbp_digits_vit", num_classes=7)
    with pytest.raises(vbp.VbpError, match="teacher's outputs"):
        finetune(
            copy.deepcopy(digits_pruned[1]), vbp.digits_split("train"), None, FinetuneConfig(epochs=1), teacher=teacher
        )
    finetune(
        copy.deepcopy(digits_pruned[1]),
        Subset(vbp.digits_split("train"), range(64)),
        None,
        FinetuneConfig(epochs=1, batch_size=32),
        output=tmp_path,
        progress=False,
    )
    with pytest.raises(vbp.VbpError, match=r"other options.*epochs \(now 2, saved 1\), lr \(now 0.001"):
        finetune(
            copy.deepcopy(digits_pruned[1]),
            vbp.digits_split("train"),
            None,
            FinetuneConfig(epochs=2, batch_size=32, lr=1e-3),
            output=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(vbp.VbpError, match="checkpoint of another model"):
        finetune(
            copy.deepcopy(digits_pruned[0]),
            vbp.digits_split("train"),
            None,
            FinetuneConfig(epochs=2, batch_size=32, lr=1e-3),
            output=tmp_path,
            resume=True,
            accept_changes=True,
        )


def test_finetune_command_under_torchrun_with_two_gloo_processes(digits_pruned, tmp_path):
    vbp.save_pruned(digits_pruned[1], tmp_path / "pruned.safetensors")
    pruned, output = str(tmp_path / "pruned.safetensors"), str(tmp_path / "ft")
    args = ["--epochs", "2", "--batch-size", "64", "--output", output, "--device", "cpu"]
    done = run_torchrun(29517, "finetune", "--pruned", pruned, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2] and log[-1]["top1"] > 50
    tuned = vbp.load_pruned(tmp_path / "ft" / "model.safetensors")
    assert vbp.families.site_widths(tuned) == vbp.families.site_widths(digits_pruned[1])
