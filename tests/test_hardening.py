"""Bad input and faults through the `vbp` command: a clear `vbp COMMAND: error: ...` (exit 2) that says what
was wrong, no input file changed (bytes compared before and after), and options that are honoured."""

import copy
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

import vbp
from vbp.cli import main
from vbp.files import atomic_path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files a user has: statistics, a plan, a pruned model, a weights checkpoint, a text file, images."""
    d = tmp_path_factory.mktemp("inputs")
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, vbp.workflows.data.loader(vbp.digits_split("train"), 512), num_batches=1, progress=False)
    stats.save(d / "stats.safetensors")
    plan = vbp.select(stats, 0.5)
    plan.save(d / "plan.json")
    vbp.save_pruned(vbp.prune(copy.deepcopy(model), plan, stats), d / "pruned.safetensors")
    (d / "run").mkdir()
    (d / "run" / "model.safetensors").write_bytes((d / "pruned.safetensors").read_bytes())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "weights.safetensors")
    (d / "notes.txt").write_text("not a checkpoint\n")
    g = torch.Generator().manual_seed(0)
    for folder in ("flat", "classes/a", "bad/a"):
        (d / folder).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(d / folder / f"{i}.png")
    (d / "bad/a/3.png").write_bytes(b"this is no png")
    return d


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _malformed(d, name, edit):
    """A copy of a vbp safetensors file with its JSON metadata edited."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(d / name, framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["vbp"]), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    out = d.parent / f"malformed_{name}"
    save_file(tensors, out, metadata={"vbp": json.dumps(meta)})
    return out


BAD = [
    # outputs that are inputs
    (["prune", "--ratio", "0.5", "--stats", "{d}/stats.safetensors", "--summary", "{d}/stats.safetensors"],
     "is the same file as the input"),
    # prune writes no statistics when given --stats: reusing a folder's own statistics is allowed (none here)
    (["prune", "--ratio", "0.5", "--checkpoint", "{d}/weights.safetensors", "--output", "{d}/x",
      "--stats", "{d}/x/stats.safetensors"], "statistics file {d}/x/stats.safetensors does not exist"),
    (["calibrate", "--stats", "{d}/weights.safetensors", "--checkpoint", "{d}/weights.safetensors"],
     "is the same file as the input"),
    (["finetune", "--pruned", "{d}/run/model.safetensors", "--output", "{d}/run", "--epochs", "1"],
     "is the same file as the input"),
    # malformed files
    (["prune", "--ratio", "0.5", "--checkpoint", "{d}/notes.txt"], "cannot load checkpoint"),
    (["eval", "--pruned", "{d}/notes.txt"], "not a readable vbp pruned model"),
    (["prune", "--ratio", "0.5", "--stats", "MALFORMED_STATS"], "non-negative integer"),
    (["eval", "--pruned", "MALFORMED_MODEL"], "the file is damaged"),
    # options
    (["eval", "--pruned", "{d}/pruned.safetensors", "--ratio", "0.5"], "give one of them"),
    (["prune", "--ratio", "0.5", "--device", "cuda:7"], "no such CUDA device"),
    (["prune", "--ratio", "0.5", "--device", "gpu"], "not a device name"),
    (["prune", "--ratio", "0.5", "--min-keep", "1000"], "min_keep must be between 1 and the smallest site width"),
    (["finetune", "--pruned", "{d}/pruned.safetensors", "--output", "{d}/ft", "--lr", "-1"], "learning rate"),
    (["prune", "--ratio", "0.5", "--compensation", "affine", "--stats", "{d}/stats.safetensors"],
     "calibrate again with covariance"),
    (["prune", "--ratio", "0.5", "--data", "{d}/bad", "--model", "deit_tiny_patch16_224"], "cannot read the image"),
    (["prune", "--ratio", "0.5", "--data", "{d}/notes.md"], "does not exist"),
    # options that contradict each other
    (["prune", "--ratio", "0.5", "--no-compensation", "--compensation", "affine"], "contradicts"),
    (["prune", "--ratio", "0.5", "--ridge", "0.1"], "--ridge applies to --compensation affine only"),
    (["finetune", "--pruned", "{d}/pruned.safetensors", "--output", "{d}/ft", "--no-kd", "--teacher", "x"],
     "give one of them"),
    (["calibrate", "--stats", "{d}/new.safetensors", "--resume-anyway"], "give it with --resume"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[f"{a[0]}-{m[:30]}" for a, m in BAD])
def test_bad_input_is_a_clear_error_and_changes_no_input(inputs, args, message, capsys):
    malformed = {
        "MALFORMED_STATS": lambda: _malformed(inputs, "stats.safetensors", lambda m: m["counts"].update({"blocks.0.mlp": -1})),
        "MALFORMED_MODEL": lambda: _malformed(inputs, "pruned.safetensors", lambda m: m["sites"].pop("blocks.0.mlp")),
    }
    args = [str(malformed[a]()) if a in malformed else a.format(d=inputs) for a in args]
    before = _snapshot(inputs)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"vbp {args[0]}: error: " in err and message.format(d=inputs) in err, err
    assert "Traceback" not in err
    assert _snapshot(inputs) == before


def test_unreadable_images_can_be_skipped_and_flat_folders_calibrate(inputs, tmp_path, capsys):
    common = ["--model", "deit_tiny_patch16_224", "--batch-size", "2"]
    assert main(["calibrate", *common, "--data", str(inputs / "bad"), "--skip-bad-images",
                 "--stats", str(tmp_path / "s.safetensors")]) == 0
    assert vbp.Stats.load(tmp_path / "s.safetensors").inputs == 3  # the three readable images
    assert main(["calibrate", *common, "--data", str(inputs / "flat"), "--stats", str(tmp_path / "f.safetensors")]) == 0
    assert vbp.Stats.load(tmp_path / "f.safetensors").inputs == 3
    assert "random weights" in capsys.readouterr().err  # deit_tiny without --pretrained: warned


def test_num_batches_is_honoured_by_eval(inputs, capsys):
    assert main(["eval", "--pruned", str(inputs / "pruned.safetensors"), "--batch-size", "10", "--num-batches", "2"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--pruned", str(inputs / "pruned.safetensors"), "--batch-size", "20", "--num-batches", "1"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["top1"] == same["top1"]  # the same 20 images either way
    assert (one["top1"] * 20 / 100) == pytest.approx(round(one["top1"] * 20 / 100))  # a count out of 20 images


def test_resume_refuses_changed_options(tmp_path, capsys):
    stats = str(tmp_path / "s.safetensors")
    common = ["calibrate", "--stats", stats, "--save-partial-every", "1", "--num-batches", "3"]
    assert main([*common, "--batch-size", "100"]) == 0
    os.replace(stats, f"{stats}.partial")  # as an interrupted run leaves it
    before = (tmp_path / "s.safetensors.partial").read_bytes()
    assert main([*common, "--batch-size", "50", "--resume"]) == 2
    assert "batch_size (now 50, saved 100)" in capsys.readouterr().err
    assert (tmp_path / "s.safetensors.partial").read_bytes() == before
    assert main([*common, "--batch-size", "50", "--resume", "--resume-anyway"]) == 0


def test_message_a_plan_that_prunes_much_less_than_asked_is_loud_and_one_that_prunes_nothing_an_error(inputs):
    stats = vbp.Stats.load(inputs / "stats.safetensors")  # sites of 128 neurons
    with pytest.warns(UserWarning, match="only 21.9% go"):
        plan = vbp.select(stats, 0.5, scope="layer", min_keep=100)
    assert plan.pruned_fraction == 28 / 128
    with pytest.warns(UserWarning, match="round_to=128 is at or above"):
        with pytest.raises(vbp.VbpError, match="leave every neuron in place"):
            vbp.select(stats, 0.5, round_to=128)


def test_message_round_to_that_prunes_nothing_is_one_line_without_python_warnings(inputs, capsys):
    args = ["prune", "--ratio", "0.5", "--stats", str(inputs / "stats.safetensors"), "--round-to", "128"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vbp prune: error: min_keep=1 and round_to=128 leave every neuron in place" in err
    assert "UserWarning" not in err and ".py:" not in err


@pytest.mark.parametrize("ratio", ["0.5", None, True, float("nan")])
def test_message_select_with_a_ratio_that_is_not_a_number(inputs, ratio):
    with pytest.raises(vbp.VbpError, match="ratio must be|either ratio or a latency target"):
        vbp.select(vbp.Stats.load(inputs / "stats.safetensors"), ratio)


def test_message_empty_statistics(inputs):
    empty = vbp.Stats("vbp_digits_vit", {})
    with pytest.raises(vbp.VbpError, match="hold no MLP sites"):
        vbp.select(empty, 0.5)


@pytest.mark.parametrize("ridge", ["nan", "inf", "-1"])
def test_message_ridge_that_is_not_a_finite_non_negative_number(inputs, ridge, capsys):
    args = ["prune", "--ratio", "0.5", "--compensation", "affine", "--ridge", ridge]
    assert main(args) == 2
    assert "ridge must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["calibrate", "prune", "eval", "finetune", "sweep", "demo"])
def test_message_version_and_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--version"])
    assert capsys.readouterr().out.strip() == f"vbp {vbp.__version__}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    options = re.split(r"\n  (?=-)", capsys.readouterr().out)  # one chunk per option
    assert all(o.count("default") <= 1 and "(default: None)" not in o for o in options), options


def test_retention_of_a_reference_that_gets_nothing_right():
    assert vbp.workflows.evaluate.retention(50.0, 0.0) is None and vbp.workflows.evaluate.retention(45.0, 90.0) == 50.0


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vbp {vbp.__version__}" and vbp.__version__ != "0+unknown"


def test_count_includes_compacted_timm_mlps():
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    assert vbp.count(vbp.compact(copy.deepcopy(model))) == vbp.count(model)


def test_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    target = tmp_path / "out.json"
    code = (
        "import os, sys, vbp.files as f\n"
        "with f.atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    assert len(list(tmp_path.glob(".out.json.vbp-*.tmp"))) == 1 and not target.exists()
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and target.read_text() == "whole"


def test_ctrl_c_says_how_to_resume(tmp_path):
    stats = tmp_path / "s.safetensors"
    cmd = [sys.executable, "-m", "vbp", "calibrate", "--stats", str(stats), "--save-partial-every", "1",
           "--batch-size", "1", "--data", "synthetic", "--model", "deit_base_patch16_224", "--num-batches", "1000"]
    # Ctrl-C as at a terminal, also when this test runs in a background job (which ignores SIGINT, and a child
    # that starts with SIGINT ignored never turns it into KeyboardInterrupt)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        for line in proc.stderr:  # wait until the first partial statistics are saved: there is something to resume
            if "calibrate:" in line and os.path.exists(f"{stats}.partial"):
                break
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; run the same command with --resume" in err and "Traceback" not in err


def test_num_classes_loads_a_checkpoint_with_its_own_head(tmp_path, capsys):
    from safetensors.torch import save_file

    head7 = vbp.create_model("vbp_digits_vit", num_classes=7).state_dict()
    save_file({k: v.contiguous() for k, v in head7.items()}, tmp_path / "w7.safetensors")
    args = ["prune", "--ratio", "0.5", "--checkpoint", str(tmp_path / "w7.safetensors"), "--num-batches", "1"]
    assert main(args) == 2 and "cannot load checkpoint" in capsys.readouterr().err
    assert main([*args, "--num-classes", "7", "--output", str(tmp_path / "out")]) == 0
    assert vbp.load_pruned(tmp_path / "out" / "model.safetensors").head.out_features == 7


def test_finetuning_on_an_image_folder_with_workers_repeats_with_the_same_seed(inputs, tmp_path):
    from vbp.workflows.finetune import FinetuneConfig, finetune

    torch.manual_seed(0)
    student = vbp.create_model("deit_tiny_patch16_224", num_classes=2)
    train = vbp.workflows.data.dataset(str(inputs / "classes"), student, training=True)  # random augmentations
    assert vbp.workflows.data.loader_workers(train) > 0
    runs = []
    for _ in range(2):
        model = copy.deepcopy(student)
        finetune(model, train, None, FinetuneConfig(epochs=2, batch_size=2, seed=3, kd_alpha=0), progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_truncated_finetuning_checkpoint_is_a_clear_error(inputs, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    args = ["finetune", "--pruned", str(inputs / "pruned.safetensors"), "--output", str(tmp_path), "--resume"]
    assert main([*args, "--epochs", "1"]) == 2
    assert "not a readable fine-tuning checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("keep"), "it has no entry 'keep'"),
        (lambda d: d["keep"].update({"blocks.0.mlp": [0, 1.5]}), "must be an integer"),
        (lambda d: d["widths"].update({"blocks.0.mlp": "wide"}), "malformed vbp plan"),
        (lambda d: d["keep"].update({"blocks.0.mlp": [3, 1]}), "invalid set of neurons"),
    ],
)
def test_malformed_plans_are_clear_errors(inputs, tmp_path, edit, message):
    doc = json.loads((inputs / "plan.json").read_text())
    edit(doc)
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(vbp.VbpError, match=message):
        vbp.Plan.load(tmp_path / "plan.json")


def test_startup_imports_no_heavy_library_until_used():
    """`import vbp` and building the `vbp` parser (what `vbp --help` does) import no model library; the first
    model created imports its own."""
    heavy = ("transformers", "sklearn", "matplotlib", "torchvision", "timm", "triton")
    code = (
        "import sys, vbp, vbp.cli\n"
        "vbp.cli.build_parser()\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "vbp.create_model('vbp_digits_vit')\n"
        "print('timm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]
