"""Hardening pass III: bad and odd input as a new user meets it, each test named by its class (data_loss, silent,
message). Every refusal is one line `vbp COMMAND: error: ...`, exit status 2, no traceback, no input changed."""

import copy
import math

import pytest
import torch

import vbp
from vbp.cli import main
from vbp.errors import VbpError

# a builder of one's own, as a user writes it (put on sys.path by the `user_module` fixture)
BUILDER = '''
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.down(self.act(self.up(x)))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(64, 8), nn.Sequential(Block(), Block()), nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x.flatten(1))))

def build():
    return Net()
'''
MODULE = "vbp_hardening_pass_models"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"py:{MODULE}:build"


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error(capsys, command: str) -> str:
    """The one error line of a refused command (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"vbp {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _refused(capsys, args: list[str], *fragments: str, unchanged=()) -> str:
    before = [_snapshot(folder) for folder in unchanged]
    assert main(args) == 2
    line = _error(capsys, args[0])
    for fragment in fragments:
        assert fragment in line, line
    assert [_snapshot(folder) for folder in unchanged] == before
    return line


# --- data loss ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "plan.json"])
def test_data_loss_prune_summary_onto_a_file_of_its_output_folder_is_refused(digits_files, tmp_path, capsys, name):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / name).write_text("a result of an earlier run\n")
    args = ["prune", "--stats", str(digits_files / "stats.safetensors"), "--ratio", "0.5", "--output", str(out),
            "--summary", str(out / name)]
    _refused(capsys, args, f"({'--summary'}) is also written as", "(--output)", "give --summary another path",
             unchanged=[out, digits_files])


def test_data_loss_prune_summary_beside_the_output_files_still_works(digits_files, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--stats", str(digits_files / "stats.safetensors"), "--ratio", "0.5", "--output", str(out),
            "--summary", str(out / "summary.json")]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "plan.json", "summary.json", ".vbp-output.json"}


# --- silently wrong -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_silent_pruned_with_another_model_is_refused(digits_files, tmp_path, capsys, command):
    args = [command, "--pruned", str(digits_files / "pruned.safetensors"), "--model", "deit_tiny_patch16_224",
            "--num-batches", "1"]
    if command == "finetune":
        args += ["--output", str(tmp_path / "tuned"), "--epochs", "1"]
    _refused(capsys, args, "was pruned from vbp_digits_vit, not --model deit_tiny_patch16_224", "leave out --model",
             unchanged=[digits_files])


def test_silent_pruned_with_its_own_model_is_accepted(digits_files, capsys):
    args = ["eval", "--pruned", str(digits_files / "pruned.safetensors"), "--model", "vbp_digits_vit", "--num-batches", "1",
            "--batch-size", "16"]
    assert main(args) == 0
    assert '"retention_pct"' in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--stats", "STATS"], "--stats"),
        (["--criterion", "magnitude", "--round-to", "8"], "--criterion, --round-to"),
        (["--compensation", "affine"], "--compensation"),
    ],
)
def test_silent_eval_pruned_refuses_options_of_a_model_pruned_now(digits_files, capsys, extra, named):
    extra = [str(digits_files / "stats.safetensors") if a == "STATS" else a for a in extra]
    args = ["eval", "--pruned", str(digits_files / "pruned.safetensors"), "--num-batches", "1", *extra]
    _refused(capsys, args, f"{named} shape a model pruned now (--ratio)", "leave them out", unchanged=[digits_files])


@pytest.mark.parametrize("temperature", ["nan", "inf"])
def test_silent_finetune_refuses_a_temperature_that_is_not_finite(digits_files, tmp_path, capsys, temperature):
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(tmp_path / "tuned"),
            "--kd-temperature", temperature, "--num-batches", "1"]
    _refused(capsys, args, "--kd-temperature a positive finite number", unchanged=[digits_files])
    assert not (tmp_path / "tuned").exists()


# --- messages -------------------------------------------------------------------------------------------------


def test_message_digits_data_with_another_image_model(digits_files, capsys):
    args = ["prune", "--model", "deit_tiny_patch16_224", "--ratio", "0.5", "--num-batches", "1", "--batch-size", "2"]
    _refused(capsys, args, "'digits' are 1x8x8 images", "deit_tiny_patch16_224 takes 3x224x224", "--data DIR")


@pytest.mark.parametrize("size", ["1,16,16", "3,8,8"])
def test_message_py_model_input_size_it_cannot_take(user_module, tmp_path, capsys, size):
    args = ["prune", "--model", user_module, "--sites", "blocks.*:up->down", "--input-size", size, "--ratio", "0.5",
            "--num-batches", "1", "--summary", str(tmp_path / "s.json")]
    _refused(capsys, args, f"{user_module} fails on an input of shape {size.replace(',', 'x')} (from --input-size)",
             "give --input-size C,H,W")
    assert not (tmp_path / "s.json").exists()


def test_message_py_model_input_size_it_takes_still_works(user_module, tmp_path):
    args = ["prune", "--model", user_module, "--sites", "blocks.*:up->down", "--input-size", "1,8,8", "--ratio", "0.5",
            "--num-batches", "1", "--batch-size", "8", "--summary", str(tmp_path / "s.json")]
    assert main(args) == 0


@pytest.mark.parametrize("command", ["eval", "finetune", "demo"])
@pytest.mark.parametrize("device", ["gpu", "cuda:7"])
def test_message_bad_device_in_every_command(digits_files, tmp_path, capsys, command, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("cuda:7 exists here")
    args = {
        "eval": ["eval", "--pruned", str(digits_files / "pruned.safetensors")],
        "finetune": ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(tmp_path / "t")],
        "demo": ["demo", "--no-text", "--output", str(tmp_path / "demo")],
    }[command]
    _refused(capsys, [*args, "--device", device], f"--device {device}" if ":" in device else f"--device '{device}'",
             unchanged=[digits_files])


def test_message_checkpoint_of_another_architecture_is_one_short_line(digits_files, capsys):
    args = ["calibrate", "--model", "deit_tiny_patch16_224", "--checkpoint", str(digits_files / "pruned.safetensors"),
            "--data", "synthetic", "--num-batches", "1", "--stats", str(digits_files / "unused.safetensors")]
    line = _refused(capsys, args, "cannot load checkpoint", "keys missing", "of other shapes",
                    "load it with --pruned FILE")
    assert len(line) < 600
    assert not (digits_files / "unused.safetensors").exists()


def test_message_pruned_model_as_checkpoint_says_to_use_pruned(digits_files, tmp_path, capsys):
    args = ["prune", "--checkpoint", str(digits_files / "pruned.safetensors"), "--ratio", "0.5", "--num-batches", "1"]
    _refused(capsys, args, "blocks.0.mlp.fc1.weight", "in the file", "load it with --pruned FILE", unchanged=[digits_files])


def test_message_checkpoint_that_is_no_weights_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    args = ["calibrate", "--checkpoint", str(notes), "--stats", str(tmp_path / "s.safetensors"), "--num-batches", "1"]
    _refused(capsys, args, f"cannot load checkpoint {notes} into 'vbp_digits_vit': it cannot be read", "give a safetensors file or a torch state dict")
    assert notes.read_text() == "hello\n"


@pytest.mark.parametrize("option, value, fragment", [
    ("--samples", "0", "--samples must be at least 1"),
    ("--samples", "-5", "--samples must be at least 1"),
    ("--finetune-epochs", "-1", "--finetune-epochs must be 0 (no fine-tuning) or more"),
])
def test_message_sweep_counts_refused_before_any_work(tmp_path, capsys, option, value, fragment):
    args = ["sweep", "--output", str(tmp_path / "sweep"), "--rates", "0.5", "--num-batches", "1", option, value]
    _refused(capsys, args, fragment)
    assert not (tmp_path / "sweep").exists()


def test_message_calibrate_negative_save_partial_every(tmp_path, capsys):
    args = ["calibrate", "--save-partial-every", "-1", "--num-batches", "1", "--stats", str(tmp_path / "s.safetensors")]
    _refused(capsys, args, "--save-partial-every must be 0 (never) or a number of batches, got -1")
    assert not list(tmp_path.iterdir())


def test_message_library_calibrate_and_prune_name_wrong_arguments(digits_files):
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    batch = vbp.digits_split("train").tensors[0][:8]
    with pytest.raises(VbpError, match="takes a torch.nn.Module, got str"):
        vbp.calibrate("vbp_digits_vit", [batch])
    with pytest.raises(VbpError, match=r"wrap one batch in a list"):
        vbp.calibrate(model, batch)
    for data in (None, "digits"):
        with pytest.raises(VbpError, match="must be an iterable of batches"):
            vbp.calibrate(model, data)
    for n in (1.5, math.nan, True):
        with pytest.raises(VbpError, match="num_batches must be a whole number"):
            vbp.calibrate(model, [batch], num_batches=n)
    stats = vbp.Stats.load(digits_files / "stats.safetensors")
    plan = vbp.select(stats, 0.5)
    with pytest.raises(VbpError, match="plan must be a vbp Plan .*got NoneType"):
        vbp.prune(copy.deepcopy(model), None, stats)
    with pytest.raises(VbpError, match="plan must be a vbp Plan .*got Stats"):
        vbp.prune(copy.deepcopy(model), stats, plan)
