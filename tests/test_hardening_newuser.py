"""Hardening III, the new-user pass (docs/hardening.md, "New-user pass"): wrong kinds of files, crafted metadata,
options that mean nothing, outputs onto other vbp outputs, interrupted calibrations, the gguf: family and
export --model. Each test failed on the code before its fix; each refusal is one line `vbp COMMAND: error: ...`,
exit status 2, no traceback (or a VbpError from the library)."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from test_hardening_iii import _refused  # one refusal check for both passes

import vbp
from vbp.cli import main
from vbp.errors import VbpError
from vbp.model_attributes import GGUF_SOURCE
from vbp.workflows.data import check_data


def _rewritten(source, target, change) -> str:
    """A copy of the vbp safetensors file `source` with change(meta, tensors) applied."""
    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["vbp"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    save_file(tensors, str(target), metadata={"vbp": json.dumps(meta)})
    return str(target)


@pytest.fixture(scope="module")
def prune_folder(digits_files, tmp_path_factory):
    """A folder `vbp prune --output` wrote (model.safetensors, plan.json, manifest) from the digits statistics."""
    out = tmp_path_factory.mktemp("newuser") / "p"
    assert main(["prune", "--ratio", "0.5", "--stats", str(digits_files / "stats.safetensors"), "--output", str(out)]) == 0
    return out


# --- wrong kinds of files --------------------------------------------------------------------------------------


def test_a_file_of_another_kind_is_named_for_what_it_is(digits_files, prune_folder, tmp_path, capsys):
    """Before: "Error while deserializing header: header too large" (a plan, an ONNX file), "header too small" (an
    empty file), "'utf-8' codec can't decode byte 0x91" (statistics given as a plan)."""
    with pytest.raises(VbpError, match=r"is a vbp pruning plan \('vbp-plan/1'\), not vbp statistics"):
        vbp.Stats.load(prune_folder / "plan.json")
    with pytest.raises(VbpError, match=r"is vbp statistics \('vbp-stats/2'\), not a vbp plan file"):
        vbp.Plan.load(digits_files / "stats.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64))
    with pytest.raises(VbpError, match="m.onnx is an ONNX model, not a vbp pruned model: give DIR/model.safetensors"):
        vbp.load_pruned(tmp_path / "m.onnx")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(VbpError, match="is an empty file, not a vbp pruned model"):
        vbp.load_pruned(tmp_path / "empty.safetensors")
    _refused(capsys, ["eval", "--pruned", str(prune_folder / "plan.json")], "is a vbp pruning plan", "not a vbp pruned model")


def test_a_folder_where_a_file_is_expected_is_said_to_be_one(digits_files, prune_folder, capsys):
    """Before: "pruned model file p does not exist", "statistics file p does not exist", "checkpoint p does not
    exist", for folders that exist."""
    with pytest.raises(VbpError, match=f"is a folder, not a file: give the file in it, {prune_folder / 'model.safetensors'}"):
        vbp.load_pruned(prune_folder)
    with pytest.raises(VbpError, match="plan file .* is a folder, not a file: give the file in it, .*plan.json"):
        vbp.Plan.load(prune_folder)
    _refused(capsys, ["eval", "--pruned", str(prune_folder)], "is a folder, not a file", "model.safetensors")
    _refused(capsys, ["prune", "--ratio", "0.5", "--checkpoint", str(prune_folder)], "checkpoint", "is a folder, not a file")


def test_a_symbolic_link_loop_is_one_line(tmp_path, capsys):
    """Before: a RuntimeError traceback ("Symlink loop from ...") from resolving the paths."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    _refused(capsys, ["prune", "--ratio", "0.5", "--data", str(loop)], f"{loop} is a symbolic link that leads back to itself")
    _refused(capsys, ["calibrate", "--stats", str(loop)], "is a symbolic link that leads back to itself")
    _refused(capsys, ["prune", "--ratio", "0.5", "--output", str(loop)], f"{loop} is a symbolic link")


UNREADABLE = """
import sys, vbp
from vbp.workflows.text import read_sentences
for name, load in (("stats", vbp.Stats.load), ("pruned", vbp.load_pruned), ("text", read_sentences),
                   ("checkpoint", lambda p: vbp.create_model("vbp_digits_vit", checkpoint=p))):
    try:
        load(sys.argv[1])
    except vbp.VbpError as exc:
        print(name, exc)
    except Exception as exc:
        print(name, "TRACEBACK", type(exc).__name__, exc)
"""


def test_an_unreadable_file_is_said_to_be_unreadable(digits_files, tmp_path):
    """Before: "(No such file or directory: X)" for statistics, pruned models and checkpoints that exist but cannot be
    read, and a PermissionError traceback for a text file. Run as another user's process would (root reads anything:
    there, without the capabilities that let it)."""
    path = tmp_path / "locked.safetensors"
    shutil.copy(digits_files / "stats.safetensors", path)
    path.chmod(0)
    command = [sys.executable, "-c", UNREADABLE, str(path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads unreadable files, and setpriv is not here to drop that")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert set(lines) == {"stats", "pruned", "text", "checkpoint"}, out
    for name, line in lines.items():
        assert "permission denied" in line and "TRACEBACK" not in line and "No such file" not in line, (name, line)


# --- crafted metadata ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m, t: m["counts"].update({"blocks.0.mlp": float("inf")}), "a count must be a non-negative integer"),
        (lambda m, t: m["counts"].update({"blocks.0.mlp": 10**400}), "a count must be a non-negative integer"),
        (lambda m, t: t["blocks.1.mlp/mean"].__setitem__(5, float("nan")), "hold NaN, infinite or negative values"),
        (lambda m, t: t["blocks.1.mlp/m2"].__setitem__(7, -5.0), "hold NaN, infinite or negative values"),
    ],
    ids=["count-inf", "count-10**400", "mean-nan", "m2-negative"],
)
def test_statistics_with_values_no_calibration_gives_are_refused(digits_files, tmp_path, capsys, change, message):
    """Before: OverflowError tracebacks for the counts; a NaN mean folded into a bias (the pruned model at chance,
    exit 0), a negative variance pruned first, both silently."""
    path = _rewritten(digits_files / "stats.safetensors", tmp_path / "s.safetensors", change)
    with pytest.raises(VbpError, match=message):
        vbp.Stats.load(path)
    _refused(capsys, ["prune", "--ratio", "0.5", "--stats", path], message)


def test_a_plan_with_a_ratio_of_nan_is_refused(prune_folder, tmp_path):
    doc = json.loads((prune_folder / "plan.json").read_text())
    doc["ratio"] = float("nan")
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(VbpError, match=r"malformed vbp plan \(its ratio must be a number in \[0, 1\), got nan\)"):
        vbp.Plan.load(tmp_path / "plan.json")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 2000}, "has more parameters than the file has tensors"),
        ({"num_classes": 10**6}, "asks to build vbp_digits_vit with num_classes 1000000, more than the 35306 weights"),
    ],
    ids=["layers-beyond-the-tensors", "a-size-beyond-the-weights"],
)
def test_a_pruned_file_asking_for_a_far_larger_model_than_it_holds_is_refused_before_it_is_built(
    digits_files, tmp_path, kwargs, message
):
    """Before: depth 10**9 filled 19 GB of memory (timm lists a drop-path rate per block, then makes the blocks on the
    meta device) until the machine killed it. Here sizes that merely built 2000 blocks, or a 10**6-class head, before
    "rebuilds with MLP sites ..." / "tensor head.weight is (10, 32) in the file"."""
    path = _rewritten(digits_files / "pruned.safetensors", tmp_path / "deep.safetensors",
                      lambda m, t: m["source"].update(kwargs=kwargs))
    with pytest.raises(VbpError, match=message):
        vbp.load_pruned(path)


def test_a_site_spec_in_a_file_that_does_not_fit_says_it_is_the_files(digits_files, tmp_path):
    """Before: "site spec: module 'blocks.0' has no 'fc1'", as if the user had given --sites."""
    spec = [{"parents": "blocks.*", "producers": ["fc1"], "consumer": "fc2", "act": None}]
    path = _rewritten(digits_files / "pruned.safetensors", tmp_path / "spec.safetensors", lambda m, t: m.update(spec=spec))
    with pytest.raises(VbpError, match="the MLP sites .*spec.safetensors names do not fit 'vbp_digits_vit'"):
        vbp.load_pruned(path)


def _steady_clock(fns, rounds, sync):
    """A stand-in for the latency profile's timer: 4 ms for the model, 1 ms without its MLPs, an MLP of width w
    0.1 ms + 1 us per neuron (nothing is timed)."""
    return {k: [{"model": 4e-3, "bare": 1e-3}[k] if isinstance(k, str) else 1e-4 + 1e-6 * k[1]] * rounds for k in fns}


def test_a_latency_table_of_nan_says_so(tmp_path, monkeypatch):
    """Before: "has negative times" for NaN."""
    profile = importlib.import_module("vbp.latency.profile")
    monkeypatch.setattr(profile, "interleaved_times", _steady_clock)
    profile.profile(vbp.create_model("vbp_digits_vit", pretrained=True), 2, rounds=3, progress=False).save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["shapes"][0]["ms"] = [float("nan")] * len(doc["shapes"][0]["ms"])
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(VbpError, match="negative or non-finite times"):
        vbp.latency.LatencyTable.load(tmp_path / "t.json")


# --- a model named for a pruned file ----------------------------------------------------------------------------


def test_a_model_named_for_a_pruned_file_it_was_not_pruned_from_is_refused(digits_files, tmp_path, capsys):
    """Before: load_pruned(path, model=...) and `vbp export --model` ignored any other model than a py: file's own;
    naming another builder for a py: file was answered "name it yourself (--model THE_SAME)"."""
    pruned = str(digits_files / "pruned.safetensors")
    with pytest.raises(VbpError, match="was pruned from vbp_digits_vit, not deit_tiny_patch16_224"):
        vbp.load_pruned(pruned, model="deit_tiny_patch16_224")
    _refused(capsys, ["export", "--pruned", pruned, "--onnx", str(tmp_path / "x.onnx"), "--model", "py:mod:build"],
             "was pruned from vbp_digits_vit, not py:mod:build")
    assert not (tmp_path / "x.onnx").exists()
    assert type(vbp.load_pruned(pruned, model="timm:vbp_digits_vit")).__name__ == "VisionTransformer"  # its own: fine


# --- options that mean nothing --------------------------------------------------------------------------------


def test_data_options_that_a_run_would_ignore_are_refused(digits_files, tmp_path, capsys):
    """Before: accepted and ignored (prune --stats reads no data; eval --stats calibrates nothing; a text file has
    no images to skip; --runtime without a latency to measure or predict)."""
    stats = str(digits_files / "stats.safetensors")
    _refused(capsys, ["prune", "--ratio", "0.5", "--stats", stats, "--data", "synthetic", "--num-batches", "5"],
             "--data, --num-batches shape the data read, and with --stats no data is read")
    _refused(capsys, ["eval", "--ratio", "0.3", "--stats", stats, "--num-batches", "1", "--backend", "torch"],
             "--backend shapes a calibration, and this run calibrates nothing")
    (tmp_path / "s.txt").write_text("a sentence\n")
    _refused(capsys, ["calibrate", "--data", str(tmp_path / "s.txt"), "--skip-bad-images", "--stats",
                      str(tmp_path / "s.safetensors")], "--skip-bad-images leaves out unreadable images")
    _refused(capsys, ["prune", "--ratio", "0.5", "--stats", stats, "--runtime", "compact"],
             "--runtime compact is the runtime a latency is measured or predicted for")
    # the options the statistics were gathered with, given again (one list of options for calibrate and prune): fine
    common = ["--num-batches", "1", "--batch-size", "32"]
    assert main(["calibrate", *common, "--stats", str(tmp_path / "own.safetensors")]) == 0
    assert main(["prune", "--ratio", "0.5", *common, "--stats", str(tmp_path / "own.safetensors")]) == 0


# --- outputs onto other vbp outputs ------------------------------------------------------------------------------


def test_profile_refuses_to_replace_a_file_that_is_no_latency_table(digits_files, prune_folder, tmp_path, capsys):
    """Before: `vbp profile --output p/plan.json` (or onto statistics) replaced it with a latency table."""
    for target in (prune_folder / "plan.json", digits_files / "stats.safetensors"):
        before = target.read_bytes()
        _refused(capsys, ["profile", "--latency-batch", "2", "--output", str(target)],
                 "already exists and is not a vbp latency table", "--overwrite")
        assert target.read_bytes() == before


def test_demo_refuses_a_folder_another_command_wrote(prune_folder, capsys):
    """Before: `vbp demo --output p` replaced the prune folder's model.safetensors and plan.json (after 3 minutes)."""
    before = {p.name: p.read_bytes() for p in prune_folder.iterdir()}
    _refused(capsys, ["demo", "--output", str(prune_folder)], "holds the output of vbp prune (vbp_digits_vit)")
    assert {p.name: p.read_bytes() for p in prune_folder.iterdir()} == before


def test_calibrate_refuses_to_replace_statistics_of_another_model(digits_files, tmp_path, capsys):
    """Before: `calibrate --model deit_tiny... --stats S` replaced the digits statistics in S without a word."""
    target = tmp_path / "s.safetensors"
    shutil.copy(digits_files / "stats.safetensors", target)
    before = target.read_bytes()
    _refused(capsys, ["calibrate", "--model", "deit_tiny_patch16_224", "--data", "synthetic", "--num-batches", "1",
                      "--stats", str(target)], "holds the statistics of vbp_digits_vit, not deit_tiny_patch16_224")
    assert target.read_bytes() == before


def test_calibrate_never_starts_over_on_an_interrupted_calibration_silently(digits_files, tmp_path, capsys):
    """Before: the same command without --resume started from zero and replaced STATS.partial (6 batches by 4)."""
    stats = tmp_path / "s.safetensors"
    partial = tmp_path / "s.safetensors.partial"
    shutil.copy(digits_files / "stats.safetensors", partial)
    before = partial.read_bytes()
    args = ["calibrate", "--stats", str(stats), "--save-partial-every", "1", "--num-batches", "2"]
    _refused(capsys, args, "s.safetensors.partial holds the statistics of an interrupted calibration",
             "--resume", "--overwrite")
    assert partial.read_bytes() == before and not stats.exists()
    assert main([*args, "--overwrite"]) == 0  # started over, as asked
    assert stats.exists() and not partial.exists()


# --- the gguf: family ---------------------------------------------------------------------------------------------


def test_gguf_a_folder_or_no_file_is_said_to_be_so(tmp_path):
    """Before: "gguf:DIR: no such file" for a folder that exists, and the current folder for "gguf:"."""
    (tmp_path / "model.gguf").mkdir()
    with pytest.raises(VbpError, match="model.gguf is a folder, not a GGUF file"):
        vbp.create_model(f"gguf:{tmp_path / 'model.gguf'}")
    with pytest.raises(VbpError, match="gguf: names no file"):
        vbp.create_model("gguf:")


def test_gguf_model_is_named_by_its_file_not_its_cache_folder():
    """Before: "hf:/root/.cache/vbp/gguf/... is a text model", a folder the user never named."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    model = transformers.BertModel(config).eval()
    setattr(model, GGUF_SOURCE, "gguf:/models/m.gguf")
    with pytest.raises(VbpError, match=r"^gguf:/models/m.gguf is a text model"):
        check_data("digits", model)
