"""Data loss and silently wrong results: no command writes onto or into what the user has, a fine-tuning run is
never started over on top of another, and statistics are only used with the weights they were gathered on."""

import json
import os

import pytest
import torch

import vbp
from vbp.cli import build_parser, main
from vbp.commands.paths import FINETUNE_FILES, PRUNE_FILES, SWEEP_FILES, check_outputs_spare_inputs

# command -> (required arguments, the options it reads from the user, its outputs: option -> "file" | "folder");
# the tested input and output come after the required ones, and argparse keeps an option's last value
OTHER = "/nonexistent/other"
COMMANDS = {
    "calibrate": (["--stats", OTHER], ["--model", "--checkpoint", "--data"], {"--stats": "file"}),
    "prune": (["--ratio", "0.5"], ["--model", "--checkpoint", "--data", "--stats"], {"--output": "folder", "--summary": "file"}),
    "eval": ([], ["--model", "--checkpoint", "--data", "--stats", "--pruned"], {"--summary": "file"}),
    "finetune": (["--pruned", OTHER, "--output", OTHER], ["--checkpoint", "--data", "--val-data", "--pruned", "--teacher"],
                 {"--output": "folder"}),
    "sweep": (["--output", OTHER], ["--model", "--checkpoint", "--data", "--val-data"], {"--output": "folder"}),
    "export": (["--pruned", OTHER], ["--pruned", "--source"], {"--onnx": "file", "--hf": "folder"}),
    "profile": ([], ["--model", "--checkpoint"], {"--output": "file"}),
}
FOLDER_INPUTS = {"--model", "--teacher", "--source"}  # hf: folders (--source: the folder itself)
FILE_OR_FOLDER_INPUTS = {"--data", "--val-data"}  # a .txt file or an image folder
FIRST_FILE = {"prune": PRUNE_FILES[0], "finetune": FINETUNE_FILES[0], "sweep": SWEEP_FILES[0], "export": "x.safetensors"}


def _forms(option):
    return ("folder",) if option in FOLDER_INPUTS else ("file", "folder") if option in FILE_OR_FOLDER_INPUTS else ("file",)


PAIRS = [
    (command, given, output, form)
    for command, (_, reads, writes) in COMMANDS.items()
    for given in reads
    for output in writes
    for form in _forms(given)
]


def _arguments(command, tmp_path, given, output, form):
    """Arguments where `output` is the input `given` (a file) or lies inside it (a folder)."""
    required, _, writes = COMMANDS[command]
    if form == "folder":
        source = tmp_path / "users_folder"
        source.mkdir()
        value = f"hf:{source}" if given in ("--model", "--teacher") else str(source)
        target = source / ("out" if writes[output] == "folder" else "out.json")
    else:  # a file; a folder output is the folder holding it under a name the command writes
        source = tmp_path / (FIRST_FILE[command] if writes[output] == "folder" else "users_file.safetensors")
        source.write_bytes(b"the user's")
        value, target = str(source), tmp_path if writes[output] == "folder" else source
    return [command, *required, given, value, output, str(target)]


@pytest.mark.parametrize("command,given,output,form", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_data_loss_no_output_is_or_lies_inside_an_input(tmp_path, command, given, output, form):
    args = build_parser().parse_args(_arguments(command, tmp_path, given, output, form))
    with pytest.raises(vbp.VbpError, match="is the same file as the input|lies inside the (input|output) folder"):
        check_outputs_spare_inputs(command, args)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A small random BERT saved as a Hugging Face folder, and a sentences file."""
    import transformers

    d = tmp_path_factory.mktemp("hf")
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(d / "bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "sentence", "number", "of", "a", "few", "words"]
    words += [str(i) for i in range(40)]
    words += [f"w{i}" for i in range(120 - len(words))]  # the model's own tokenizer: one token per embedding row
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(d / "bert")
    (d / "sentences.txt").write_text("".join(f"sentence number {i} of a few words\n" for i in range(40)))
    return d


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "outputs",
    [["--output", "{d}/bert"], ["--summary", "{d}/sentences.txt"], ["--output", "{d}/bert/pruned"]],
    ids=["output-onto-model-folder", "summary-onto-data", "output-inside-model-folder"],
)
def test_data_loss_prune_leaves_the_hf_folder_and_the_data_as_they_were(bert_folder, outputs, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _snapshot(bert_folder)
    args = ["prune", "--model", f"hf:{bert_folder}/bert", "--data", str(bert_folder / "sentences.txt"), "--ratio", "0.5"]
    assert main([*args, *(o.format(d=bert_folder) for o in outputs)]) == 2
    assert "would" in capsys.readouterr().err
    assert _snapshot(bert_folder) == before


def test_data_loss_finetune_does_not_start_over_on_a_run(digits_files, tmp_path, capsys):
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--output", str(tmp_path / "run"),
            "--epochs", "1", "--num-batches", "1", "--batch-size", "8"]
    assert main(args) == 0
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a fine-tuning run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(tmp_path / "run") == before
    assert main([*args, "--resume", "--overwrite"]) == 2 and "give one of them" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def _weights_file(path, seed, name="vbp_digits_vit"):
    """A weights file of `name` with random weights from `seed`."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in vbp.create_model(name).state_dict().items()}, path)
    return str(path)


def test_silent_statistics_of_other_weights_are_refused(digits_files, tmp_path, capsys):
    """Statistics of the embedded trained weights, used with another checkpoint: refused unless --stats-anyway."""
    other = _weights_file(tmp_path / "other.safetensors", seed=1)
    args = ["prune", "--ratio", "0.5", "--stats", str(digits_files / "stats.safetensors"), "--checkpoint", other]
    assert main(args) == 2
    assert "gathered on other weights" in capsys.readouterr().err
    assert main([*args, "--stats-anyway"]) == 0
    assert main(["prune", "--ratio", "0.5", "--stats", str(digits_files / "stats.safetensors")]) == 0  # same weights
    assert main(["prune", "--ratio", "0.5", "--stats-anyway"]) == 2 and "give it with --stats" in capsys.readouterr().err


def test_silent_statistics_record_their_weights_and_old_files_still_load(digits_files, tmp_path):
    from vbp.files import read_safetensors, write_safetensors
    from vbp.fingerprint import weights_fingerprint

    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.Stats.load(digits_files / "stats.safetensors")
    assert stats.weights == weights_fingerprint(model) != weights_fingerprint(vbp.create_model("vbp_digits_vit"))
    tensors, meta = read_safetensors(digits_files / "stats.safetensors", "vbp-stats/2", "statistics")
    meta["images"] = meta.pop("inputs")  # a file written before the rename, without the weights record
    del meta["weights"]
    write_safetensors(tmp_path / "old.safetensors", tensors, meta)
    old = vbp.Stats.load(tmp_path / "old.safetensors")
    assert old.inputs == stats.inputs == 256 and old.weights == ""
    with pytest.warns(UserWarning, match="do not record the weights"):
        old.check_weights(stats.weights)


def test_silent_one_folder_written_three_ways_is_one_model(bert_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(bert_folder)
    common = ["--data", "sentences.txt", "--num-batches", "1", "--batch-size", "8"]
    assert main(["calibrate", "--model", "hf:bert/", *common, "--stats", str(tmp_path / "s.safetensors")]) == 0
    for spelling in ("hf:bert", "hf:./bert", f"hf:{bert_folder}/bert/"):
        summary = tmp_path / "summary.json"
        assert main(["prune", "--model", spelling, *common, "--ratio", "0.5", "--stats", str(tmp_path / "s.safetensors"),
                     "--summary", str(summary)]) == 0
        assert json.loads(summary.read_text())["ratio_removed"] > 0.4


def test_silent_resume_never_mixes_two_initialisations(tmp_path, capsys):
    """A random model is built from a fixed seed, so resuming continues the same weights; a partial file of
    other weights is refused, even with --resume-anyway."""
    stats = str(tmp_path / "s.safetensors")
    common = ["calibrate", "--model", "deit_tiny_patch16_224", "--data", "synthetic", "--batch-size", "2",
              "--num-batches", "2", "--save-partial-every", "1", "--stats", stats]
    assert main(common) == 0
    whole = vbp.Stats.load(stats)
    os.replace(stats, f"{stats}.partial")
    assert main([*common, "--resume"]) == 0
    assert vbp.Stats.load(stats).weights == whole.weights
    os.replace(stats, f"{stats}.partial")
    other = _weights_file(tmp_path / "w.safetensors", seed=2, name="deit_tiny_patch16_224")
    assert main([*common, "--checkpoint", other, "--resume", "--resume-anyway"]) == 2
    assert "made on other weights" in capsys.readouterr().err


def test_message_text_models_on_eval_and_finetune(bert_folder, tmp_path, capsys, monkeypatch):
    """eval compares a pruned text model with the unpruned one; alone it has nothing to measure (one line, no
    traceback); finetune distils it, and without a teacher says a text file has no labels."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = ["--data", str(bert_folder / "sentences.txt"), "--batch-size", "8"]
    model = ["--model", f"hf:{bert_folder}/bert"]
    assert main(["prune", *model, *common, "--ratio", "0.5", "--output", str(tmp_path / "p")]) == 0
    assert main(["eval", *model, *common, "--ratio", "0.5"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"cosine", "nn_agreement"}
    assert main(["eval", *model, *common]) == 2
    finetune = ["finetune", "--pruned", str(tmp_path / "p" / "model.safetensors"), *common, "--epochs", "1"]
    assert main([*finetune, "--no-kd", "--output", str(tmp_path / "nokd")]) == 2
    err = capsys.readouterr().err
    assert "has no accuracy to measure alone" in err and "leave out --no-kd" in err and "Traceback" not in err
    assert main([*finetune, "--output", str(tmp_path / "ft")]) == 0
    assert vbp.families.site_widths(vbp.load_pruned(tmp_path / "ft" / "model.safetensors")) == vbp.families.site_widths(
        vbp.load_pruned(tmp_path / "p" / "model.safetensors")
    )


def test_data_loss_reused_inputs_are_not_outputs_and_an_onnx_file_stays_out_of_the_hf_folder(tmp_path):
    """prune --stats p/stats.safetensors --output p/ reuses an earlier run's statistics (prune writes no statistics
    then); an existing --latency-table is read, not written; export --onnx inside the --hf folder it replaces is
    refused."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "stats.safetensors").write_bytes(b"stats")
    (tmp_path / "t.json").write_text("{}")
    parse = build_parser().parse_args
    args = parse(["prune", "--ratio", "0.5", "--stats", str(tmp_path / "p" / "stats.safetensors"),
                  "--output", str(tmp_path / "p"), "--latency-table", str(tmp_path / "t.json")])
    check_outputs_spare_inputs("prune", args)  # no error
    args = parse(["prune", "--ratio", "0.5", "--latency-table", str(tmp_path / "t.json"), "--summary",
                  str(tmp_path / "t.json")])
    with pytest.raises(vbp.VbpError, match="same file as the input"):
        check_outputs_spare_inputs("prune", args)
    args = parse(["export", "--pruned", str(tmp_path / "m.safetensors"), "--hf", str(tmp_path / "out"), "--onnx",
                  str(tmp_path / "out" / "m.onnx")])
    with pytest.raises(vbp.VbpError, match="lies inside --hf"):
        check_outputs_spare_inputs("export", args)
