"""Hardening II: models of your own (py:MODULE:FUNCTION), user-named sites, text models and data counts.

Each test names the class of its case: MESSAGE (bad input ends in one line, `vbp COMMAND: error: ...`, exit 2,
before any work), SILENT (a number that was quietly wrong), or DATA LOSS.
"""

import json

import pytest
import torch
import transformers
from PIL import Image
from torch import nn

import vbp
from vbp.cli import main
from vbp.families.spec import check_flow, set_spec

# An importable module of builders, as a user writes one (put on sys.path by the `user_models` fixture).
MODULE = "vbp_test_user_models"
SOURCE = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.down(nn.functional.gelu(self.up(x)))


class Patches(nn.Module):
    """Images -> tokens of 32 x 32 patches -> MLP blocks -> the mean token. Declares no input size."""

    def __init__(self, dim=8, hidden=24, depth=2, patch=32):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(depth))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return x.mean(1)


def build(**kwargs):
    torch.manual_seed(0)
    return Patches(**kwargs)


def broken(width=3):
    raise TypeError(f"width {width} is not a multiple of 8\\n(second line of the message)")


def not_a_module():
    return "a string"


class Crossed(nn.Module):
    """fc2 reads act(side(x)), a tensor as wide as act(fc1(x)): shapes chain, the data does not flow."""

    _vbp_input_shape = (6,)

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"fc1": nn.Linear(6, 16), "side": nn.Linear(6, 16), "fc2": nn.Linear(16, 6)})]
        )

    def forward(self, x):
        b = self.blocks[0]
        return x + b["fc2"](torch.relu(b["side"](x))) + b["fc1"](x).sum(-1, keepdim=True)


def crossed():
    torch.manual_seed(0)
    return Crossed()
'''


@pytest.fixture
def user_models(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "user_models"
    if not folder.exists():
        folder.mkdir()
        (folder / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _images(folder, n, bad=0, size=20):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    for i in range(bad):
        (folder / f"bad{i}.png").write_bytes(b"not an image")
    return folder


def _error(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"vbp {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- 1. builders that fail, and --pretrained -------------------------------------------------------------------


def test_message_a_builder_that_raises_is_one_line(user_models, capsys):
    assert main(["prune", "--model", f"py:{MODULE}:broken", "--ratio", "0.5"]) == 2
    line = _error(capsys, "prune")
    assert f"the builder py:{MODULE}:broken raised TypeError: width 3 is not a multiple of 8" in line
    assert line.endswith("(second line of the message); fix it or its arguments")


def test_message_a_builder_that_returns_no_module(user_models, capsys):
    assert main(["prune", "--model", f"py:{MODULE}:not_a_module", "--ratio", "0.5"]) == 2
    assert f"py:{MODULE}:not_a_module returned str, not a torch.nn.Module" in _error(capsys, "prune")


def test_message_pretrained_with_a_py_model_is_refused_not_ignored(user_models, capsys):
    assert main(["prune", "--model", f"py:{MODULE}:build", "--pretrained", "--ratio", "0.5"]) == 2
    assert "py: models take their weights from --checkpoint" in _error(capsys, "prune")
    with pytest.raises(vbp.VbpError, match="--checkpoint"):
        vbp.create_model(f"py:{MODULE}:build", pretrained=True)


# --- 2. the README's py: example, and the input size -----------------------------------------------------------


def _macs(dim, hidden_widths, tokens=49, patch=32):
    """Patches' MACs: the patch embedding (a conv) and each block's two Linear layers, per token."""
    return tokens * (3 * patch * patch * dim + sum(2 * dim * h for h in hidden_widths))


def test_message_readme_example_prunes_a_user_model_on_an_image_folder(user_models, tmp_path, capsys):
    """The README's line, with --summary: the input size comes from the images the run calibrates on (timm's
    evaluation transforms: 3 x 224 x 224, 49 patches), and the MACs follow the formula before and after."""
    data = _images(tmp_path / "images", 6)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    args = ["prune", "--model", f"py:{MODULE}:build", "--sites", "blocks.*:up->down", "--data", str(data),
            "--ratio", "0.5", "--batch-size", "3", "--summary", str(summary), "--output", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    s = json.loads(summary.read_text())
    assert s["widths"] and sum(s["widths"].values()) == 24  # half of 2 x 24 neurons
    assert s["macs_full_g"] * 1e9 == _macs(8, [24, 24])
    assert s["macs_g"] * 1e9 == _macs(8, s["widths"].values())
    reloaded = vbp.load_pruned(out / "model.safetensors", model=f"py:{MODULE}:build")  # the input size is saved with the model
    assert vbp.count(reloaded)[0] == _macs(8, s["widths"].values())


def test_message_without_an_input_size_the_error_comes_before_any_work(user_models, tmp_path, capsys):
    model = ["--model", f"py:{MODULE}:build", "--sites", "blocks.*:up->down"]
    # --stats: the run reads no data to take the size from (the stats file is not even looked at)
    assert main(["prune", *model, "--stats", str(tmp_path / "absent.safetensors"), "--ratio", "0.5"]) == 2
    assert "has no input size" in (line := _error(capsys, "prune")) and "--input-size C,H,W" in line
    # synthetic data has no size of its own either; nothing is written
    stats = tmp_path / "s.safetensors"
    assert main(["calibrate", *model, "--data", "synthetic", "--stats", str(stats)]) == 2
    assert "--input-size" in _error(capsys, "calibrate") and not stats.exists()
    # given, it is the size calibrated, counted and checked at
    summary = tmp_path / "summary.json"
    assert main(["prune", *model, "--input-size", "3,64,64", "--data", "synthetic", "--batch-size", "2",
                 "--ratio", "0.25", "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["macs_full_g"] * 1e9 == _macs(8, [24, 24], tokens=4)
    assert s["macs_g"] * 1e9 == _macs(8, s["widths"].values(), tokens=4)


@pytest.mark.parametrize(
    "args,message",
    [
        ([f"py:{MODULE}:build", "--input-size", "3,a,64"], "is not a shape; give positive sizes like 3,224,224"),
        ([f"py:{MODULE}:build", "--input-size", "3,0,64"], "is not a shape"),
        (["vbp_digits_vit", "--input-size", "1,8,8"], "--input-size is for py: models"),
    ],
)
def test_message_bad_input_sizes(user_models, args, message, capsys):
    assert main(["prune", "--model", *args, "--data", "synthetic", "--ratio", "0.5"]) == 2
    assert message in _error(capsys, "prune")


# --- 3. sites that validate but do not match the data flow ------------------------------------------------------


class _Mixed(nn.Module):
    """fc2 reads LayerNorm(act(fc1(x))): every hidden channel reaches every input channel of fc2."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"fc1": nn.Linear(6, 16), "norm": nn.LayerNorm(16), "fc2": nn.Linear(16, 6)})]
        )

    def forward(self, x):
        b = self.blocks[0]
        return b["fc2"](b["norm"](nn.functional.gelu(b["fc1"](x))))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"fc1": nn.Linear(6, 16), "spare": nn.Linear(6, 16), "fc2": nn.Linear(16, 6)})]
        )

    def forward(self, x):
        b = self.blocks[0]
        return b["fc2"](torch.relu(b["fc1"](x)))


class _Gated(nn.Module):
    """LLaMA-like: no biases, SiLU gate, a 1x1-conv twin; on a zero input every hidden value would be 0."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({n: nn.Linear(6, 16, bias=False) for n in ("gate", "up")} | {"down": nn.Linear(16, 6)})]
        )
        self.convs = nn.ModuleList([nn.ModuleDict({"fc1": nn.Conv2d(6, 16, 1), "fc2": nn.Conv2d(16, 6, 1)})])

    def forward(self, x):
        b, c = self.blocks[0], self.convs[0]
        x = x + b["down"](nn.functional.silu(b["gate"](x)) * b["up"](x))
        y = c["fc2"](torch.relu(c["fc1"](x.transpose(1, 2).unsqueeze(-1))))
        return y.squeeze(-1).transpose(1, 2)


@pytest.mark.parametrize(
    "make,spec,message",
    [
        (lambda: vbp.create_model(f"py:{MODULE}:crossed"), "blocks.*:fc1->fc2",
         "'blocks.0.fc2' does not read the output of 'blocks.0.fc1' (site 'blocks.0'): changing hidden channel"),
        (_Mixed, "blocks.*:fc1->fc2", "'blocks.0.fc2' does not read 'blocks.0.fc1' channel by channel"),
        (_Unused, "blocks.*:spare->fc2", "'blocks.0.spare' (site 'blocks.0') does not run"),
    ],
)
def test_message_sites_that_do_not_match_the_data_flow(user_models, make, spec, message):
    torch.manual_seed(0)
    model = make()
    vbp.find_sites(model, spec=spec)  # names and shapes chain: the spec validates
    with pytest.raises(vbp.VbpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_flow(model, torch.zeros(2, 6))


def test_message_true_sites_pass_the_data_flow_check():
    """Gated (perturbing up), biasless on a zero example, and 1x1 conv over NCHW: no false alarm."""
    torch.manual_seed(0)
    model = _Gated().eval()
    set_spec(model, ["blocks.*:gate,up->down", "convs.*:fc1->fc2"])
    check_flow(model, torch.zeros(1, 5, 6))
    assert model.training is False


def test_message_cli_checks_sites_before_any_work(user_models, tmp_path, capsys):
    stats = tmp_path / "s.safetensors"
    args = ["calibrate", "--model", f"py:{MODULE}:crossed", "--sites", "blocks.*:fc1->fc2", "--data", "synthetic",
            "--stats", str(stats)]
    assert main(args) == 2
    assert "does not read the output of 'blocks.0.fc1'" in _error(capsys, "calibrate")
    assert not stats.exists()


# --- 4. text models on every command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.mark.parametrize(
    "command",
    [
        ["calibrate", "--stats", "{tmp}/s.safetensors"],
        ["prune", "--ratio", "0.5"],
        ["eval", "--ratio", "0.5"],
        ["sweep", "--output", "{tmp}/sweep"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("data", [None, "digits", "images"])
def test_message_text_model_with_image_data_says_give_a_text_file(text_model, tmp_path, capsys, command, data):
    args = [a.format(tmp=tmp_path) for a in command] + ["--model", text_model]
    if data == "images":
        args += ["--data", str(_images(tmp_path / "images", 2))]
    elif data:
        args += ["--data", data]
    assert main(args) == 2
    assert f"{text_model} is a text model: give --data FILE.txt (sentences, one per line)" in _error(capsys, args[0])
    assert not (tmp_path / "s.safetensors").exists()


def test_message_synthetic_data_for_a_text_model_is_token_ids_of_its_vocabulary(text_model, tmp_path):
    model = vbp.create_model(text_model)
    ids = vbp.workflows.data.dataset("synthetic", model, num_images=5).tensors[0]
    assert ids.shape == (5, 128) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < 50 and len(ids.unique()) > 25
    stats = tmp_path / "s.safetensors"
    assert main(["calibrate", "--model", text_model, "--data", "synthetic", "--batch-size", "2", "--num-batches", "2",
                 "--stats", str(stats)]) == 0
    assert all(m.count == 2 * 2 * 128 for m in vbp.Stats.load(stats).sites.values())  # every token a sample


def test_message_text_file_for_an_image_model(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("one sentence\n")
    assert main(["prune", "--data", str(tmp_path / "s.txt"), "--ratio", "0.5"]) == 2
    assert "is text, for Hugging Face text models, and vbp_digits_vit is not one" in _error(capsys, "prune")


# --- 5. inputs of skipped batches -------------------------------------------------------------------------------


class _NanOnMarker(nn.Module):
    """Two MLPs; an input whose first feature is 1e30 makes every activation NaN (inf - inf)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(4, 8), "down": nn.Linear(8, 4)}) for _ in range(2))

    def forward(self, x):
        x = x * x * 1e30 - x * x * 1e30 if bool((x[:, 0] == 1e30).any()) else x
        for b in self.blocks:
            x = x + b["down"](torch.relu(b["up"](x)))
        return x


def test_silent_inputs_of_skipped_batches_are_not_counted():
    torch.manual_seed(0)
    model = _NanOnMarker().eval()
    set_spec(model, "blocks.*:up->down")
    batches = [torch.randn(3, 4) for _ in range(3)]
    batches[1][0, 0] = 1e30  # the second batch (3 inputs) gives NaN at every site
    stats = vbp.calibrate(model, batches, nonfinite="skip", progress=False)
    assert stats.skipped == {"blocks.0": 1, "blocks.1": 1}
    assert stats.batches == 3
    assert stats.inputs == 6  # not 9: the skipped batch's inputs went into no statistic
    assert all(m.count == 6 for m in stats.sites.values())
    # num_samples counts calibrated inputs too: 5 of them, the skipped batch does not use any up
    assert vbp.calibrate(model, batches, num_samples=5, nonfinite="skip", progress=False).inputs == 5


# --- 6. --skip-bad-images says how many; progress bars end at N/N ------------------------------------------------


def test_message_skip_bad_images_reports_how_many_were_left_out(tmp_path, capsys):
    data = _images(tmp_path / "data" / "a", 4, bad=2, size=8).parent  # one class folder: 4 images, 2 unreadable
    common = ["--model", "deit_tiny_patch16_224", "--data", str(data), "--batch-size", "3", "--skip-bad-images"]
    assert main(["calibrate", *common, "--stats", str(tmp_path / "s.safetensors")]) == 0
    err = capsys.readouterr().err
    assert f"--skip-bad-images left out 2 unreadable images (2 in {data.resolve()})" in err
    assert vbp.Stats.load(tmp_path / "s.safetensors").inputs == 4
    # eval reads the folder three times (calibration, pruned and unpruned model): each image still counts once
    assert main(["eval", *common, "--ratio", "0.5"]) == 0
    err = capsys.readouterr().err
    assert err.count("left out") == 1 and "left out 2 unreadable images" in err


def test_message_num_batches_beyond_the_data_ends_the_bar_at_the_real_total(capsys):
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    data = vbp.workflows.data.loader(torch.utils.data.Subset(vbp.digits_split("train"), range(30)), 10)  # 3 batches
    vbp.calibrate(model, data, num_batches=100)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if "calibrate" in line][-1]
    assert "3/3" in last and "/100" not in last


def test_message_finetune_bar_ends_at_the_batches_it_runs(capsys):
    from vbp.workflows.finetune import FinetuneConfig, finetune

    student = vbp.create_model("vbp_digits_vit", pretrained=True)
    train = torch.utils.data.Subset(vbp.digits_split("train"), range(64))  # 8 batches of 8
    finetune(student, train, None, FinetuneConfig(epochs=1, batch_size=8, max_batches=2, kd_alpha=0.0))
    last = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "epoch 1/1" in line][-1]
    assert "2/2" in last and "/8" not in last
