"""Shipping pruned models: select(scope="uniform"), ONNX files checked in onnxruntime, and Hugging Face folders
that plain transformers / sentence-transformers load (checked in a process that cannot import vbp)."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import random_batches, small_model
from test_select import stats_with_variances

import vbp
from vbp.cli import main
from vbp.workflows.export import export_hf, export_onnx, pad_sites

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


# ------------------------------------------------------------------------------------------- scope="uniform"


def test_uniform_keeps_one_width_of_each_sites_best_neurons():
    g = torch.Generator().manual_seed(0)
    variances = {f"s{i}": torch.rand(40, generator=g).tolist() for i in range(4)}
    plan = vbp.select(stats_with_variances(**variances), 0.37, scope="uniform")
    assert plan.scope == "uniform"
    assert set(plan.kept_widths.values()) == {25}  # round(0.63 * 40): the ratio met as closely as one width allows
    for name, v in variances.items():
        best = sorted(torch.topk(torch.tensor(v), 25).indices.tolist())
        assert plan.keep[name] == best
    assert abs(plan.pruned_fraction - 0.37) <= 0.5 / 40


def test_uniform_with_round_to_min_keep_and_unequal_widths():
    s = stats_with_variances(a=list(range(1, 101)), b=list(range(1, 101)), c=list(range(1, 101)))
    plan = vbp.select(s, 0.5, scope="uniform", round_to=16)
    assert set(plan.kept_widths.values()) == {48}  # 50 is nearest, but widths are multiples of 16
    assert plan.keep["a"] == list(range(52, 100))
    assert set(vbp.select(s, 0.0, scope="uniform", round_to=16).kept_widths.values()) == {100}  # full width allowed
    assert set(vbp.select(s, 0.99, scope="uniform", min_keep=3).kept_widths.values()) == {3}
    # sites of different widths keep the same number, the narrow one whole when it is below it
    mixed = vbp.select(stats_with_variances(a=[1.0] * 10, b=[1.0] * 100), 0.5, scope="uniform")
    assert mixed.kept_widths == {"a": 10, "b": 45}
    assert mixed.pruned_fraction == pytest.approx(0.5)


def test_uniform_is_a_cli_choice():
    from vbp.cli import build_parser

    args = build_parser().parse_args(["prune", "--ratio", "0.5", "--scope", "uniform", "--round-to", "8"])
    assert args.scope == "uniform" and args.round_to == 8


# ----------------------------------------------------------------------------------------------------- ONNX


def pruned(model, batches, ratio=0.4, scope="global"):
    stats = vbp.calibrate(model, batches, progress=False)
    return vbp.prune(copy.deepcopy(model), vbp.select(stats, ratio, scope=scope), stats)


def test_pruned_deit_onnx_equals_pytorch_at_another_batch_size(tmp_path):
    import onnx
    import onnxruntime

    model = pruned(small_model("deit_tiny_patch16_224", img_size=32), random_batches(1, 2, (3, 32, 32)))
    path = tmp_path / "deit.onnx"
    result = export_onnx(model, path, check_batch=5)
    assert result["max_rel_error"] <= 1e-4 and result["check_batch"] == 5
    proto = onnx.load(str(path))
    assert any(o.version == result["opset"] for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    x = random_batches(1, 7, (3, 32, 32), seed=3)[0]
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)
    # a compacted model exports as its eager maths
    assert export_onnx(vbp.compact(copy.deepcopy(model)), tmp_path / "compact.onnx")["max_rel_error"] <= 1e-4


def test_torchvision_and_gated_llama_export_to_onnx(tmp_path):
    tv = vbp.create_model(
        "py:torchvision.models:VisionTransformer", image_size=16, patch_size=8, num_layers=2, num_heads=2,
        hidden_dim=16, mlp_dim=37,
    ).eval()
    tv = pruned(tv, random_batches(1, 2, (3, 16, 16)))
    assert export_onnx(tv, tmp_path / "tv.onnx", torch.zeros(1, 3, 16, 16))["max_rel_error"] <= 1e-4
    llama = tiny_llama()
    result = export_onnx(pruned(llama, token_batches(100)), tmp_path / "llama.onnx")
    assert result["inputs"] == ["input_ids", "attention_mask"] and result["max_rel_error"] <= 1e-4


def test_onnx_refuses_a_mismatch_and_writes_nothing(tmp_path):
    model = vbp.create_model(
        "py:torchvision.models:VisionTransformer", image_size=16, patch_size=8, num_layers=1, num_heads=2,
        hidden_dim=16, mlp_dim=8,
    ).eval()
    with pytest.raises(vbp.VbpError, match="max relative error"):
        export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 3, 16, 16), tolerance=-1.0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ Hugging Face folder


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2,
    )
    return transformers.LlamaModel(cfg).eval()


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return transformers.BertModel(cfg).eval()


def token_batches(vocab):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, vocab, (2, 8), generator=g), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}]


def outputs(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def test_unequal_widths_name_scope_uniform_or_pad_exactly(tmp_path):
    model = pruned(tiny_bert(), token_batches(100))
    assert len(set(vbp.families.site_widths(model).values())) > 1
    with pytest.raises(vbp.VbpError, match="--scope uniform.*--pad-to-uniform"):
        export_hf(model, tmp_path / "out")
    assert not list(tmp_path.iterdir())
    padded = pad_sites(copy.deepcopy(model), 37)
    x = token_batches(100)[0]
    torch.testing.assert_close(outputs(padded, x), outputs(model, x), rtol=1e-6, atol=1e-6)
    with pytest.warns(UserWarning, match="no source folder"):
        result = export_hf(model, tmp_path / "out", pad_to_uniform=True)
    widest = max(vbp.families.site_widths(model).values())
    assert result["intermediate_size"] == widest < 37 and result["padded_sites"]
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(outputs(reloaded, x), outputs(model, x), rtol=1e-6, atol=1e-6)


def test_gated_llama_folder_reloads_with_mlp_bias(tmp_path):
    model = pruned(tiny_llama(), token_batches(100), scope="uniform")
    with pytest.warns(UserWarning):
        result = export_hf(model, tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["intermediate_size"] == result["intermediate_size"] < 37 and config["mlp_bias"] is True
    x = token_batches(100)[0]
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "llama")
    torch.testing.assert_close(outputs(reloaded, x), outputs(model, x), rtol=1e-6, atol=1e-6)


def test_hf_folder_paths_and_atomicity(tmp_path, monkeypatch):
    model = pruned(tiny_bert(), token_batches(100), scope="uniform")
    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.json").write_text("{}")
    (source / "model.safetensors").write_text("the unpruned weights")
    with pytest.raises(vbp.VbpError, match="overlap"):
        export_hf(model, source / "pruned", source=source)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(vbp.VbpError, match="already holds files"):
        export_hf(model, busy, source=source)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, busy, source=source, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "source"]  # no half folder, no temporary
    assert (busy / "keep.txt").read_text() == "mine"
    monkeypatch.undo()
    result = export_hf(model, busy, source=source, overwrite=True)
    assert sorted(p.name for p in busy.iterdir()) == [".vbp-output.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert result["copied"] == ["tokenizer.json"]  # never the source's own weights
    with pytest.raises(vbp.VbpError, match="only Hugging Face models"):
        export_hf(small_model("deit_tiny_patch16_224", img_size=32), tmp_path / "deit")


# ------------------------------------------------------------- the 'done when', on all-MiniLM-L6-v2


PLAIN_LOAD = r"""
import sys
sys.modules["vbp"] = None  # this process cannot import vbp
import torch, transformers
from sentence_transformers import SentenceTransformer
out, sentences, result = sys.argv[1], sys.argv[2].split("|"), sys.argv[3]
config = transformers.AutoConfig.from_pretrained(out)
model = transformers.AutoModel.from_pretrained(out).eval()
tok = transformers.AutoTokenizer.from_pretrained(out)
with torch.no_grad():
    hidden = model(**tok(sentences, padding=True, return_tensors="pt")).last_hidden_state
st = SentenceTransformer(out, device="cpu").encode(sentences, convert_to_tensor=True)
torch.save({"intermediate_size": config.intermediate_size, "hidden": hidden, "st": st}, result)
"""


def test_minilm_uniform_prune_then_export_loads_without_vbp(tmp_path, monkeypatch, capsys):
    from vbp.workflows import minilm

    source = minilm.minilm_dir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cal.txt").write_text("\n".join(minilm.calibration_sentences(24)))
    assert main(["prune", "--model", f"hf:{source}", "--data", "cal.txt", "--ratio", "0.5", "--scope", "uniform",
                 "--batch-size", "12", "--output", "p"]) == 0
    assert main(["export", "--pruned", "p/model.safetensors", "--hf", "out"]) == 0
    assert "sentence-transformers layout" in capsys.readouterr().out
    assert (tmp_path / "out" / "1_Pooling" / "config.json").is_file()
    sentences = minilm.evaluation_sentences(4)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, "out", "|".join(sentences), "plain.pt"], check=True, env=env,
                   cwd=tmp_path)
    plain = torch.load(tmp_path / "plain.pt")
    assert plain["intermediate_size"] < 1536
    model = vbp.load_pruned(tmp_path / "p" / "model.safetensors")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    torch.testing.assert_close(plain["hidden"], outputs(model, batch), rtol=1e-5, atol=1e-5)
    from vbp.workflows.text import sentence_embeddings

    torch.testing.assert_close(plain["st"].double(), sentence_embeddings(model, [batch]), rtol=1e-5, atol=1e-5)


def test_export_command_refuses_outputs_onto_inputs(tmp_path, capsys):
    pruned_file = tmp_path / "p" / "model.safetensors"
    pruned_file.parent.mkdir()
    pruned_file.write_bytes(b"the user's")
    assert main(["export", "--pruned", str(pruned_file), "--onnx", str(pruned_file)]) == 2
    assert "same file as the input" in capsys.readouterr().err
    assert main(["export", "--pruned", str(pruned_file), "--hf", str(tmp_path / "p"), "--overwrite"]) == 2
    assert "lies inside the output folder" in capsys.readouterr().err
    assert main(["export", "--pruned", str(pruned_file)]) == 2
    assert "give --onnx FILE, --hf DIR" in capsys.readouterr().err
    assert pruned_file.read_bytes() == b"the user's"
