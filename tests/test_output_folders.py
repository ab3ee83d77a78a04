"""One owner per output folder (`vbp.output_folder`): a folder vbp writes into is new, or was written by the same
command for the same model; anything else is refused before any work (`--overwrite` replaces it whole). Folders
are staged beside the target and swapped in at once, so an interrupt or a kill leaves the old folder or the new
one, never a mix, and no temporary outlives the next run. Single-file outputs (`--stats`, `--onnx`, `--summary`)
refuse an existing file of another kind."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import vbp
from vbp.cli import build_parser, main

DIGITS = ["--num-batches", "1", "--batch-size", "64"]
TUNE = ["--epochs", "1", "--num-batches", "1", "--batch-size", "8"]
MANIFEST = ".vbp-output.json"


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _names(folder):
    return {p.name for p in folder.iterdir()}


def _temporaries(parent):
    """What vbp leaves beside its outputs while it writes them: names with '.vbp-' (folders and files)."""
    return sorted(p.name for p in parent.iterdir() if ".vbp-" in p.name)


def _error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith(f"vbp {command}: ")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


def _dead_pid() -> int:
    """The process id of a process that has ended (what a killed run's temporaries record)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _prune(digits_files, out, ratio="0.5", *extra):
    return ["prune", "--ratio", ratio, "--stats", str(digits_files / "stats.safetensors"), "--output", str(out), *extra]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# --- one owner per folder ------------------------------------------------------------------------------------


def test_prune_onto_a_finetune_run_is_refused_and_overwrite_replaces_it_whole(digits_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(run), *TUNE]) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_prune(digits_files, run)) == 2
    line = _error(capsys, "prune")
    assert "holds the output of vbp finetune" in line and "--overwrite to replace it whole" in line
    assert _snapshot(run) == before
    assert main(_prune(digits_files, run, "0.5", "--overwrite")) == 0
    assert _names(run) == {MANIFEST, "model.safetensors", "plan.json"}  # no checkpoint or log of the old run


@pytest.fixture(scope="module")
def bert_pruned(tmp_path_factory):
    """A small random BERT folder, sentences, and the model pruned to one MLP width (what export --hf takes)."""
    import transformers

    d = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(d / "bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "sentence", "number", "of", "a", "few", "words"]
    words += [str(i) for i in range(40)]
    words += [f"w{i}" for i in range(120 - len(words))]  # one token per embedding row
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(d / "bert")
    (d / "sentences.txt").write_text("".join(f"sentence number {i} of a few words\n" for i in range(40)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert main(["prune", "--model", f"hf:{d / 'bert'}", "--data", str(d / "sentences.txt"), "--batch-size", "8",
                     "--ratio", "0.5", "--scope", "uniform", "--output", str(d / "p")]) == 0
    return d


def test_prune_onto_an_export_hf_folder_is_refused_and_it_still_loads(bert_pruned, tmp_path, capsys, monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "exported"
    # a staged folder a killed export left (the name export --hf used before): removed by the next export
    orphan = tmp_path / f".exported.vbp-{_dead_pid()}.a1b2c3.tmp"
    orphan.mkdir()
    (orphan / "config.json").write_text("{}")
    assert main(["export", "--pruned", str(bert_pruned / "p" / "model.safetensors"), "--hf", str(out)]) == 0
    assert _temporaries(tmp_path) == []
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["prune", "--model", f"hf:{bert_pruned / 'bert'}", "--data", str(bert_pruned / "sentences.txt"),
                 "--batch-size", "8", "--ratio", "0.3", "--output", str(out)]) == 2
    assert "holds the output of vbp export --hf" in _error(capsys, "prune")
    assert _snapshot(out) == before
    assert transformers.AutoModel.from_pretrained(out).config.intermediate_size == 32
    # exporting the same model again replaces the folder without --overwrite
    assert main(["export", "--pruned", str(bert_pruned / "p" / "model.safetensors"), "--hf", str(out)]) == 0


def test_a_second_prune_leaves_no_statistics_of_the_first(digits_files, tmp_path):
    out = tmp_path / "p"
    assert main(["prune", "--ratio", "0.5", *DIGITS, "--output", str(out)]) == 0  # calibrates: writes its statistics
    assert (out / "stats.safetensors").is_file()
    assert main(_prune(digits_files, out, "0.3")) == 0  # statistics from elsewhere: none in the folder
    assert _names(out) == {MANIFEST, "model.safetensors", "plan.json"}
    assert vbp.Plan.load(out / "plan.json").ratio == 0.3


def test_prune_of_another_model_into_a_folder_is_refused(digits_files, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(_prune(digits_files, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["prune", "--model", "deit_tiny_patch16_224", "--data", "synthetic", "--num-batches", "1",
                 "--batch-size", "2", "--ratio", "0.5", "--output", str(out)]) == 2
    line = _error(capsys, "prune")
    assert "holds the output of vbp prune for vbp_digits_vit, not deit_tiny_patch16_224" in line
    assert _snapshot(out) == before


def test_prune_refuses_a_folder_of_other_files_and_files_beside_its_own(digits_files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(_prune(digits_files, mine)) == 2
    assert "already holds files vbp prune did not write (notes.txt)" in _error(capsys, "prune")
    assert _snapshot(mine) == {"notes.txt": b"mine"}
    out = tmp_path / "p"
    assert main(_prune(digits_files, out)) == 0
    (out / "notes.txt").write_text("mine")  # put beside a prune's files: replacing the folder would delete it
    capsys.readouterr()
    assert main(_prune(digits_files, out, "0.3")) == 2
    line = _error(capsys, "prune")
    assert "also holds files vbp prune did not write (notes.txt)" in line and "move them out" in line
    assert (out / "notes.txt").read_text() == "mine"


def test_prune_overwrite_never_deletes_an_input_inside_the_folder(digits_files, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    shutil.copy(digits_files / "stats.safetensors", out / "my_stats.safetensors")
    args = ["prune", "--ratio", "0.5", "--stats", str(out / "my_stats.safetensors"), "--output", str(out), "--overwrite"]
    assert main(args) == 2
    assert "lies inside the output folder" in _error(capsys, "prune")
    assert _names(out) == {"my_stats.safetensors"}


def test_prune_latency_table_inside_the_output_folder_is_refused(tmp_path):
    from vbp.commands.paths import check_outputs_spare_inputs

    out = tmp_path / "p"
    args = build_parser().parse_args(["prune", "--target-speedup", "1.5", "--latency-batch", "2", "--latency-table",
                                      str(out / "t.json"), "--output", str(out)])
    with pytest.raises(vbp.VbpError, match="lies inside --output .* which is replaced whole"):
        check_outputs_spare_inputs("prune", args)  # written there first, it would be gone with the old folder
    out.mkdir()
    (out / "t.json").write_text("{}")  # read there, it would be deleted with it
    with pytest.raises(vbp.VbpError, match="lies inside the output folder"):
        check_outputs_spare_inputs("prune", args)


def test_prune_reuses_the_statistics_of_its_own_folder(tmp_path):
    out = tmp_path / "p"
    assert main(["prune", "--ratio", "0.5", *DIGITS, "--output", str(out)]) == 0
    stats = (out / "stats.safetensors").read_bytes()
    assert main(["prune", "--ratio", "0.3", "--stats", str(out / "stats.safetensors"), "--output", str(out)]) == 0
    assert (out / "stats.safetensors").read_bytes() == stats  # carried into the new folder, beside its model
    assert json.loads((out / MANIFEST).read_text())["files"] == ["model.safetensors", "plan.json", "stats.safetensors"]


def test_finetune_onto_a_prune_folder_is_refused_and_overwrite_replaces_it_whole(digits_files, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(_prune(digits_files, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(out), *TUNE]
    assert main(args) == 2
    assert "holds the output of vbp prune" in _error(capsys, "finetune")
    assert _snapshot(out) == before
    assert main([*args, "--overwrite"]) == 0
    assert _names(out) == {MANIFEST, "model.safetensors", "checkpoint.pt", "log.json", "log.csv"}  # no plan.json


def test_finetune_resumes_in_its_own_folder(digits_files, tmp_path):
    from vbp.output_folder import read_manifest

    run = tmp_path / "run"
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(run), *TUNE]
    assert main(args) == 0
    (run / MANIFEST).unlink()  # a run of a vbp that wrote no manifest is resumed too (its checkpoint is checked)
    assert main([*args, "--epochs", "2", "--resume", "--resume-anyway"]) == 0
    assert len(json.loads((run / "log.json").read_text())) == 2
    assert read_manifest(run)["command"] == "finetune" and read_manifest(run)["model"] == "vbp_digits_vit"


# --- interrupts and kills ------------------------------------------------------------------------------------


def test_ctrl_c_while_prune_writes_leaves_the_old_folder(digits_files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p"
    assert main(_prune(digits_files, out)) == 0
    before = _snapshot(out)
    monkeypatch.setattr(vbp.Plan, "save", _interrupt)  # the model is written, the plan not yet
    capsys.readouterr()
    assert main(_prune(digits_files, out, "0.3")) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert _snapshot(out) == before and _temporaries(tmp_path) == []


def test_ctrl_c_after_the_folder_is_swapped_in_says_what_was_written(digits_files, tmp_path, capsys, monkeypatch):
    out, summary = tmp_path / "p", tmp_path / "summary.json"
    monkeypatch.setattr("vbp.commands.prune.write_summary", _interrupt)
    assert main(_prune(digits_files, out, "0.3", "--summary", str(summary))) == 130
    err = capsys.readouterr().err
    assert f"interrupted; wrote {out}/ before the interrupt" in err and "nothing was written" not in err
    assert vbp.Plan.load(out / "plan.json").ratio == 0.3 and not summary.exists()


def test_an_error_inside_the_staging_leaves_the_old_folder_and_no_temporary(tmp_path):
    from vbp.output_folder import staged_folder

    out = tmp_path / "p"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with staged_folder(out, "prune", "m") as new:
                (new / "model.safetensors").write_text("new")
                raise error
        assert _snapshot(out) == {"model.safetensors": b"old"} and _temporaries(tmp_path) == []


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    from vbp.output_folder import staged_folder

    out = tmp_path / "p"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    rename, renamed = os.rename, []

    def rename_then_interrupt(src, dst):
        rename(src, dst)
        renamed.append(dst)
        if len(renamed) == 1:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out, "prune", "m") as new:
            (new / "model.safetensors").write_text("new")
    monkeypatch.undo()
    assert _snapshot(out) == {"model.safetensors": b"old"} and _temporaries(tmp_path) == []


@pytest.mark.parametrize("killed", ["between-the-renames", "after-the-swap", "while-writing"])
def test_what_a_killed_prune_left_is_repaired_by_the_next_run(digits_files, tmp_path, capsys, killed):
    out = tmp_path / "p"
    assert main(_prune(digits_files, out)) == 0
    before = _snapshot(out)
    dead = _dead_pid()
    aside, staged = tmp_path / f".p.vbp-{dead}.0a1b2c3d.old", tmp_path / f".p.vbp-{dead}.k3j4l5.new"
    if killed != "after-the-swap":  # a staged folder never swapped in, complete or not
        staged.mkdir()
        (staged / "model.safetensors").write_text("half written")
    if killed == "between-the-renames":  # no folder p: the old one aside
        out.rename(aside)
    if killed == "after-the-swap":  # p is the new folder; the old one aside, half removed
        aside.mkdir()
        (aside / "plan.json").write_text("old plan")
    alive = tmp_path / f".p.vbp-{os.getpid()}.z9y8x7.new"  # a run still going: left alone
    alive.mkdir()
    capsys.readouterr()
    # the next run repairs first, even one that is then refused (another model)
    assert main(["prune", "--model", "deit_tiny_patch16_224", "--data", "synthetic", "--ratio", "0.5",
                 "--output", str(out)]) == 2
    assert "not deit_tiny_patch16_224" in _error(capsys, "prune")
    assert _snapshot(out) == before
    assert _temporaries(tmp_path) == [alive.name]


def test_ctrl_c_before_the_first_epoch_or_partial_promises_no_resume(digits_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vbp.commands.finetune.finetune", _interrupt)
    assert main(["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(tmp_path / "run"),
                 *TUNE]) == 130
    err = capsys.readouterr().err
    assert "no epoch was finished, so there is nothing to resume" in err and "--resume" not in err
    monkeypatch.setattr("vbp.commands.calibrate.calibrate_on_data", _interrupt)
    assert main(["calibrate", "--stats", str(tmp_path / "s.safetensors"), "--save-partial-every", "5", *DIGITS]) == 130
    err = capsys.readouterr().err
    assert "no partial statistics were saved yet" in err and "--resume" not in err


# --- single-file outputs -------------------------------------------------------------------------------------


def test_calibrate_stats_refuses_to_replace_a_pruned_model(digits_files, tmp_path, capsys):
    target = tmp_path / "model.safetensors"
    shutil.copy(digits_files / "pruned.safetensors", target)
    args = ["calibrate", "--stats", str(target), *DIGITS]
    assert main(args) == 2
    line = _error(capsys, "calibrate")
    assert "--stats" in line and "is not vbp statistics" in line and "--overwrite" in line
    assert target.read_bytes() == (digits_files / "pruned.safetensors").read_bytes()
    stats = tmp_path / "s.safetensors"
    shutil.copy(digits_files / "stats.safetensors", stats)
    assert main(["calibrate", "--stats", str(stats), *DIGITS]) == 0  # statistics replace statistics
    assert main([*args, "--overwrite"]) == 0 and vbp.Stats.load(target).inputs == 64


def test_export_onnx_refuses_to_replace_a_file_of_another_kind(digits_files, tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_text("my notes")
    assert main(["export", "--pruned", str(digits_files / "pruned.safetensors"), "--onnx", str(target)]) == 2
    assert "--onnx" in (line := _error(capsys, "export")) and "is not an ONNX model" in line
    assert target.read_text() == "my notes"
    import onnx
    from onnx import TensorProto, helper

    from vbp.commands.paths import check_output_kinds

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y"))
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), target)
    check_output_kinds("export", build_parser().parse_args(["export", "--pruned", "m", "--onnx", str(target)]))


@pytest.mark.parametrize("command", ["prune", "eval"])
def test_summary_refuses_a_file_of_another_kind(digits_files, tmp_path, capsys, command):
    target = tmp_path / "plan.json"  # JSON, and with "ratio_removed", but a plan
    vbp.select(vbp.Stats.load(digits_files / "stats.safetensors"), 0.5).save(target)
    before = target.read_bytes()
    if command == "prune":
        args = ["prune", "--ratio", "0.5", "--stats", str(digits_files / "stats.safetensors"), "--summary", str(target)]
    else:
        args = ["eval", "--pruned", str(digits_files / "pruned.safetensors"), "--num-batches", "1", "--batch-size", "16",
                "--summary", str(target)]
    assert main(args) == 2
    assert "--summary" in (line := _error(capsys, command)) and "is not a vbp summary" in line
    assert target.read_bytes() == before
    target.unlink()
    assert main(args) == 0 and main(args) == 0  # a summary replaces a summary
