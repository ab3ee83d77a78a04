"""Hardening III (items 3-6 of the issue): options that meant nothing or changed what the user wrote, the latency
table's and the tokenizer's trust, tracebacks and unclear messages. Each refusal is one line `vbp COMMAND: error:
...`, exit status 2, no traceback; each API refusal a VbpError."""

import copy
import importlib
import json
import math

import pytest
import torch
import transformers
from test_hardening_pass import _error  # one error-line check for every hardening pass

import vbp
from vbp.cli import main
from vbp.errors import VbpError
from vbp.workflows.data import dataset, loader

PROFILE = importlib.import_module("vbp.latency.profile")  # the module (vbp.latency.profile is its function)
WORDS = [f"w{i}" for i in range(95)]  # with BERT's 5 special tokens: one token per row of a 100-row embedding


def _refused(capsys, args: list[str], *fragments: str) -> str:
    capsys.readouterr()
    assert main(args) == 2
    line = _error(capsys, args[0])
    for fragment in fragments:
        assert fragment in line, line
    return line


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def tiny_bert(folder, vocab: int = 100, tokens: int | None = 100, seed: int = 0):
    """A tiny BERT encoder (`vocab` embedding rows, MLPs of 37) saved in `folder` with a WordPiece tokenizer of
    `tokens` tokens (none: no tokenizer files)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    if tokens is not None:
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(tokens - 5)]
        transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def _sentences(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return "".join(" ".join(WORDS[i] for i in torch.randint(0, 95, (6,), generator=g).tolist()) + "\n" for _ in range(n))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A tiny BERT with its tokenizer, 24 sentences of its words, and the model pruned by half (uniform widths)."""
    d = tmp_path_factory.mktemp("text")
    tiny_bert(d / "bert")
    (d / "s.txt").write_text(_sentences(24))
    assert main(["prune", "--model", f"hf:{d / 'bert'}", "--data", str(d / "s.txt"), "--ratio", "0.5", "--scope",
                 "uniform", "--batch-size", "8", "--output", str(d / "p")]) == 0
    return d


# --- 3. options that mean nothing, or change what the user wrote ------------------------------------------------


def test_distillation_options_with_no_kd_are_refused(digits_files, tmp_path, capsys):
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--epochs", "1", "--num-batches", "1",
            "--output", str(tmp_path / "ft"), "--no-kd"]
    _refused(capsys, [*args, "--kd-alpha", "0.7", "--kd-temperature", "4"],
             "--kd-alpha, --kd-temperature shape the distillation, and --no-kd turns it off: leave them out")
    assert not (tmp_path / "ft").exists()


def test_distillation_options_the_model_makes_meaningless_are_refused(digits_files, text, tmp_path, capsys):
    """An image classifier has no pooled sentence embedding; an encoder's hidden states have no temperature, and
    unlabelled text nothing for --kd-alpha to weigh distillation against."""
    images = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--epochs", "1", "--num-batches", "1",
              "--output", str(tmp_path / "a")]
    _refused(capsys, [*images, "--kd-pooled", "0.5", "--kd-loss", "cosine"],
             "--kd-loss, --kd-pooled mean nothing here", "this model outputs logits", "leave them out")
    words = ["finetune", "--pruned", str(text / "p" / "model.safetensors"), "--data", str(text / "s.txt"),
             "--epochs", "1", "--num-batches", "1", "--output", str(tmp_path / "b")]
    _refused(capsys, [*words, "--kd-temperature", "3"], "--kd-temperature means nothing here",
             "an encoder is distilled by its hidden states, which have no temperature")
    _refused(capsys, [*words, "--kd-alpha", "0.3"], "--kd-alpha means nothing here", "this data has none")
    assert main([*images, "--kd-alpha", "0.7", "--kd-temperature", "3"]) == 0  # what a classifier's distillation takes


def test_export_options_of_the_hf_folder_with_onnx_alone_are_refused(text, tmp_path, capsys):
    args = ["export", "--pruned", str(text / "p" / "model.safetensors"), "--onnx", str(tmp_path / "m.onnx")]
    _refused(capsys, [*args, "--source", str(text / "bert")], "--source shape the --hf folder, and only --onnx")
    _refused(capsys, [*args, "--pad-to-uniform"], "--pad-to-uniform shape the --hf folder")
    assert not (tmp_path / "m.onnx").exists()


def test_an_opset_the_exporter_cannot_write_is_refused_not_replaced(digits_files, tmp_path, capsys):
    """--opset 5 wrote opset 18 after a logged traceback; an opset the model cannot be converted to is refused
    after the export, and nothing is written."""
    out = tmp_path / "m.onnx"
    _refused(capsys, ["export", "--pruned", str(digits_files / "pruned.safetensors"), "--onnx", str(out), "--opset", "5"],
             "the ONNX opset must be a whole number from 7 to")
    model = vbp.load_pruned(digits_files / "pruned.safetensors")
    with pytest.raises(VbpError, match="could not convert VisionTransformer to opset 10 .* would have written opset 18"):
        vbp.workflows.export.export_onnx(model, out, opset=10)
    assert "Traceback" not in capsys.readouterr().err and not out.exists()


def test_sweep_methods_with_a_criterion_or_compensation_are_refused(tmp_path, capsys):
    """--methods variance+mean --compensation affine swept variance+affine alone."""
    args = ["sweep", "--methods", "variance+mean", "--rates", "0.5", "--num-batches", "1", "--samples", "16",
            "--output", str(tmp_path / "s")]
    _refused(capsys, [*args, "--compensation", "affine"],
             "--methods names each method's criterion and compensation, and --compensation name one method",
             "--methods variance+affine")
    assert not (tmp_path / "s").exists()


def test_round_to_says_what_ratio_it_removed_and_records_both(digits_files, tmp_path, capsys):
    """--scope layer --round-to 48 --ratio 0.5 keeps 48 of each 128: 62.5% removed, which it printed as
    "ratio 0.5"."""
    out, summary = tmp_path / "p", tmp_path / "s.json"
    assert main(["prune", "--stats", str(digits_files / "stats.safetensors"), "--ratio", "0.5", "--scope", "layer",
                 "--round-to", "48", "--output", str(out), "--summary", str(summary)]) == 0
    captured = capsys.readouterr()
    assert "vbp_digits_vit, 62.5% of the MLP neurons removed (asked 50.0%)" in captured.out
    assert "warning: asked to prune 50.0% of the MLP neurons, but rounding" in captured.err
    assert "removes 62.5%" in captured.err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ratio"] == 0.5 and plan["ratio_removed"] == pytest.approx(0.625)
    written = json.loads(summary.read_text())
    assert written["ratio"] == 0.5 and written["ratio_removed"] == pytest.approx(0.625)


def test_eval_ratio_on_a_text_file_evaluates_on_the_half_it_did_not_calibrate_on(text, capsys):
    args = ["eval", "--model", f"hf:{text / 'bert'}", "--data", str(text / "s.txt"), "--ratio", "0.5",
            "--batch-size", "4"]
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "calibrating on the first 12 sentences" in captured.err and "evaluating on the other 12, held out" in captured.err
    got = _last_json(captured.out)
    model = vbp.create_model(f"hf:{text / 'bert'}")
    halves = [loader(dataset(str(text / "s.txt"), model, split), 4) for split in vbp.workflows.data.TEXT_HALVES]
    stats = vbp.calibrate(model, halves[0], progress=False)
    pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats)
    want = vbp.workflows.text.text_fidelity(model, pruned, halves[1])
    assert got["cosine"] == pytest.approx(want["cosine"], abs=1e-6)


def test_finetune_resume_after_the_data_changed_is_refused(text, tmp_path, capsys):
    data = tmp_path / "s.txt"
    data.write_text((text / "s.txt").read_text())
    args = ["finetune", "--pruned", str(text / "p" / "model.safetensors"), "--data", str(data), "--batch-size", "8",
            "--epochs", "1", "--output", str(tmp_path / "ft")]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0  # the same data: resumed (nothing left to train)
    data.write_text(_sentences(24, seed=1))  # other sentences, the same name
    _refused(capsys, [*args, "--resume"],
             "the training data differs from the data the checkpoint was trained on", "--resume-anyway")
    assert main([*args, "--resume", "--resume-anyway"]) == 0


# --- 4. what a table, statistics or a tokenizer can be trusted for ----------------------------------------------


def _pruned_bert(folder, keep: dict[int, int], out):
    """The tiny BERT of `folder` with layer i keeping its first keep[i] of 37 neurons, saved to `out`."""
    model = vbp.create_model(f"hf:{folder}")
    widths = vbp.families.site_widths(model)
    names = list(widths)
    plan = vbp.Plan(vbp.models.model_name(model), 0.5, "global", widths,
                    {n: list(range(keep[i])) for i, n in enumerate(names)})
    vbp.save_pruned(vbp.prune(model, plan, compensation="none"), out)
    return out


def test_pad_to_uniform_to_the_full_width_is_refused_and_a_padded_export_says_its_size(text, tmp_path, capsys):
    full = _pruned_bert(text / "bert", {0: 37, 1: 10}, tmp_path / "full.safetensors")
    _refused(capsys, ["export", "--pruned", str(full), "--hf", str(tmp_path / "a"), "--pad-to-uniform"],
             "the export would be as large and slow as the unpruned model", "keep 64% of their neurons")
    assert not (tmp_path / "a").exists()
    part = _pruned_bert(text / "bert", {0: 30, 1: 10}, tmp_path / "part.safetensors")
    assert main(["export", "--pruned", str(part), "--hf", str(tmp_path / "b"), "--pad-to-uniform"]) == 0
    assert "1 MLP zero-padded to 81% of the unpruned MLPs' size (the pruned model's: 54%)" in capsys.readouterr().out


def test_prune_refuses_statistics_of_other_weights_unless_told(digits_files):
    stats = vbp.Stats.load(digits_files / "stats.safetensors")
    plan = vbp.select(stats, 0.5)
    torch.manual_seed(1)
    other = vbp.create_model("vbp_digits_vit")  # random weights
    with pytest.raises(VbpError, match="gathered on other weights .* other_weights=True"):
        vbp.prune(copy.deepcopy(other), plan, stats)
    vbp.prune(other, plan, stats, other_weights=True)
    vbp.prune(vbp.create_model("vbp_digits_vit", pretrained=True), plan, stats)  # its own weights


def _clock(busy: bool = False):
    """A stand-in for `interleaved_times`: steady seconds for every callable (an MLP of width w: 0.1 ms + 1 us per
    neuron; the model 4 ms, without its MLPs 1 ms), or with `busy` the model's rounds as a machine busy part of the
    time gives them (x1, 2, 4, 8, 16: a median absolute deviation of 75% of the median)."""

    def times(fns, rounds, sync):
        steady = {k: {"model": 4e-3, "bare": 1e-3}[k] if isinstance(k, str) else 1e-4 + 1e-6 * k[1] for k in fns}
        out = {k: [v] * rounds for k, v in steady.items()}
        if busy and "model" in out:
            out["model"] = [steady["model"] * f for f in (1, 2, 4, 8, 16)[:rounds]]
        return out

    return times


def test_profile_measures_its_noise_and_refuses_a_table_too_noisy_to_trust(monkeypatch, tmp_path, capsys):
    """A table measured on a busy machine predicted its load (170x the model's latency) and was reused."""
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    monkeypatch.setattr(PROFILE, "interleaved_times", _clock())
    table = PROFILE.profile(model, 2, rounds=5, progress=False)
    assert table.environment["spread"] == 0 and table.environment["max_spread"] == 0.5
    monkeypatch.setattr(PROFILE, "interleaved_times", _clock(busy=True))
    with pytest.raises(VbpError, match=r"too noisy to trust: the rounds of the model, end to end, spread by 75% of"):
        PROFILE.profile(model, 2, rounds=5, progress=False)
    assert PROFILE.profile(model, 2, rounds=5, progress=False, max_spread=0.8).environment["spread"] == 0.75
    _refused(capsys, ["profile", "--latency-batch", "2", "--max-spread", "0", "--output", str(tmp_path / "t.json")],
             "--max-spread must be a positive number")
    assert not (tmp_path / "t.json").exists()


def test_a_latency_table_with_a_negative_fixed_cost_is_refused(digits_files, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(PROFILE, "interleaved_times", _clock())
    table = PROFILE.profile(vbp.create_model("vbp_digits_vit", pretrained=True), 2, rounds=3, progress=False, max_spread=math.inf)
    table.fixed_ms = -1.0
    table.save(tmp_path / "t.json")
    with pytest.raises(VbpError, match=r"its fixed cost \(the model without MLPs, -1 ms\) must be at least 0"):
        vbp.latency.LatencyTable.load(tmp_path / "t.json")
    _refused(capsys, ["prune", "--stats", str(digits_files / "stats.safetensors"), "--target-speedup", "1.2",
                      "--latency-table", str(tmp_path / "t.json")], "fixed cost")


def test_a_text_model_without_its_tokenizer_is_refused(tmp_path, capsys):
    """transformers gives a BERT folder without tokenizer files a 5-token stand-in: every word [UNK]."""
    tiny_bert(tmp_path / "bare", tokens=None)
    (tmp_path / "s.txt").write_text(_sentences(8))
    _refused(capsys, ["calibrate", "--model", f"hf:{tmp_path / 'bare'}", "--data", str(tmp_path / "s.txt"),
                      "--stats", str(tmp_path / "s.safetensors")],
             "has 5 tokens for an embedding table of 100 rows: its tokenizer files are missing")
    assert not (tmp_path / "s.safetensors").exists()


def test_export_hf_refuses_a_source_folder_of_another_model(text, tmp_path, capsys):
    args = ["export", "--pruned", str(text / "p" / "model.safetensors"), "--hf", str(tmp_path / "out"), "--source"]
    other = tiny_bert(tmp_path / "other", vocab=150, tokens=150)
    _refused(capsys, [*args, str(other)], f"the source folder {other} holds another model (vocab_size 150, not 100)")
    (other / "config.json").unlink()  # a folder of tokenizer files alone
    _refused(capsys, [*args, str(other)], "has 150 tokens but the model's embedding table only 100 rows")
    assert not (tmp_path / "out").exists()
    assert main([*args, str(text / "bert")]) == 0  # its own


# --- 5. tracebacks ----------------------------------------------------------------------------------------------


def test_a_truncated_hf_weights_file_is_one_line(tmp_path, capsys):
    folder = tiny_bert(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "s.txt").write_text(_sentences(4))
    _refused(capsys, ["calibrate", "--model", f"hf:{folder}", "--data", str(tmp_path / "s.txt"), "--stats",
                      str(tmp_path / "s.safetensors")], "a weights file may be truncated or damaged")


def test_a_pickled_bin_in_an_hf_folder_is_one_line_and_never_runs(tmp_path, capsys):
    folder = tiny_bert(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"embeddings.word_embeddings.weight": Evil()}, folder / "pytorch_model.bin")
    (tmp_path / "s.txt").write_text(_sentences(4))
    _refused(capsys, ["calibrate", "--model", f"hf:{folder}", "--data", str(tmp_path / "s.txt"), "--stats",
                      str(tmp_path / "s.safetensors")], "hold Python objects besides tensors, which are never unpickled")
    assert not marker.exists()


def test_an_infinite_target_speedup_is_refused(digits_files, monkeypatch, capsys):
    _refused(capsys, ["prune", "--stats", str(digits_files / "stats.safetensors"), "--target-speedup", "inf",
                      "--latency-batch", "2"], "--target-speedup must be a finite number above 1")
    monkeypatch.setattr(PROFILE, "interleaved_times", _clock())
    table = PROFILE.profile(vbp.create_model("vbp_digits_vit", pretrained=True), 2, rounds=3, progress=False, max_spread=math.inf)
    stats = vbp.Stats.load(digits_files / "stats.safetensors")
    for target in (dict(target_speedup=math.inf), dict(latency_budget_ms=math.inf)):
        with pytest.raises(VbpError, match="finite number"):
            vbp.select(stats, **target, latency=table)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda s: vbp.select(s, 0.5, min_keep=2.5), r"min_keep must be a whole number of neurons, got 2.5 \(float\)"),
        (lambda s: vbp.select(s, 0.5, round_to=1.5), r"round_to must be a whole number of neurons, got 1.5"),
        (lambda s: vbp.select("stats.safetensors", 0.5), r"select takes the vbp.Stats .* vbp.Stats.load\('stats"),
        (lambda s: vbp.find_sites(None), r"find_sites takes a torch.nn.Module, got NoneType"),
    ],
    ids=["min_keep", "round_to", "path", "find_sites"],
)
def test_api_arguments_of_the_wrong_kind_are_vbp_errors(digits_files, call, message):
    with pytest.raises(VbpError, match=message):
        call(vbp.Stats.load(digits_files / "stats.safetensors"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for a machine without a GPU")
def test_load_pruned_on_a_missing_gpu_is_a_vbp_error(digits_files):
    with pytest.raises(VbpError, match="device 'cuda': no such CUDA device here"):
        vbp.load_pruned(digits_files / "pruned.safetensors", device="cuda")


def test_a_timm_model_fed_another_image_size_is_a_vbp_error():
    model = vbp.create_model("deit_tiny_patch16_224", img_size=32)
    with pytest.raises(VbpError, match=r"fails on the first calibration batch, of inputs 2x3x64x64: AssertionError: "
                                       r"Input height \(64\) .*\(deit_tiny_patch16_224 takes 3x32x32 per input\)"):
        vbp.calibrate(model, [torch.randn(2, 3, 64, 64)], progress=False)


def test_sweep_on_a_text_model_says_what_to_run_instead(text, tmp_path, capsys):
    _refused(capsys, ["sweep", "--model", f"hf:{text / 'bert'}", "--data", str(text / "s.txt"), "--output",
                      str(tmp_path / "s")], "is a text model, and vbp sweep measures the top-1 accuracy",
             "vbp eval --ratio R --data FILE.txt")


# --- 6. unclear messages ----------------------------------------------------------------------------------------


def test_synthetic_data_advice_follows_the_kind_of_model(text, capsys):
    _refused(capsys, ["eval", "--model", f"hf:{text / 'bert'}", "--data", "synthetic", "--ratio", "0.5"],
             "give --data FILE.txt (sentences, one per line)")
    _refused(capsys, ["eval", "--data", "synthetic", "--ratio", "0.5"], "give --data digits or an image folder")


def test_malformed_plans_and_tables_are_described_in_their_own_terms(tmp_path):
    plan = {"format": "vbp-plan/1", "model": "m", "ratio": 0.5, "scope": "global", "widths": None, "keep": {}}
    (tmp_path / "p.json").write_text(json.dumps(plan))
    with pytest.raises(VbpError) as plan_error:
        vbp.Plan.load(tmp_path / "p.json")
    table = {"format": "vbp-latency/1", "key": {}, "full_ms": 1, "fixed_ms": 0.5, "sites": {}, "shapes": [None]}
    (tmp_path / "t.json").write_text(json.dumps(table))
    with pytest.raises(VbpError) as table_error:
        vbp.latency.LatencyTable.load(tmp_path / "t.json")
    for error in (plan_error, table_error):
        assert "an entry holds a value of the wrong kind" in str(error.value)
        assert "NoneType" not in str(error.value) and "Error(" not in str(error.value)


def test_the_embedded_models_macs_are_printed_in_mmacs(digits_files, capsys):
    assert main(["prune", "--stats", str(digits_files / "stats.safetensors"), "--ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "0.00 -> 0.00 GMACs" not in out
    assert " MMACs (" in out and " K params (" in out


def test_profile_help_names_only_options_profile_has(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--latency-table" not in text and "--data" not in text
    assert "--max-spread" in text
