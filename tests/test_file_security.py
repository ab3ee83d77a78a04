"""Hardening III, item 1: a file never chooses code, nor an allocation its tensors do not justify.

Every loader of a file a user may be sent (a pruned model through the API and the eval/export/finetune commands,
statistics, a plan) is given crafted metadata naming a Python builder whose module leaves a marker when it is
imported; the marker must never appear. Tied tensors are written once and tied again on load."""

import copy
import json
import os

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

import vbp
from vbp.cli import main
from vbp.errors import VbpError

EVIL_MODULE = '''
import pathlib
pathlib.Path({marker!r}).write_text("ran")

def build(**kwargs):
    pathlib.Path({marker!r}).write_text("built")
    import torch
    return torch.nn.Linear(2, 2)
'''


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """(py: id of a builder whose import writes a marker, the marker path)."""
    marker = tmp_path / "code_ran"
    (tmp_path / "evil_builder_mod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "py:evil_builder_mod:build", marker


def rewritten(path, out, change) -> str:
    """A copy of the safetensors file `path` at `out` whose vbp metadata `change(meta)` rewrote."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["vbp"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    save_file(tensors, str(out), metadata={"vbp": json.dumps(meta)})
    return str(out)


def test_a_pruned_model_naming_a_builder_never_imports_it(digits_files, evil, tmp_path, capsys):
    builder, marker = evil
    path = rewritten(digits_files / "pruned.safetensors", tmp_path / "evil.safetensors",
                     lambda m: m.update(source={"model": builder, "kwargs": {"args": ["touch", "x"]}}))
    with pytest.raises(VbpError, match="vbp never runs code a file names"):
        vbp.load_pruned(path)
    with pytest.raises(VbpError, match="never runs code"):
        vbp.load_pruned(path, model="py:evil_builder_mod:other")  # naming another builder is not consent
    for args in (["eval", "--pruned", path, "--data", "digits"],
                 ["export", "--pruned", path, "--onnx", str(tmp_path / "x.onnx")],
                 ["finetune", "--pruned", path, "--data", "digits", "--output", str(tmp_path / "t")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "vbp never runs code a file names" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_a_builder_the_user_names_is_run(digits_files, evil, tmp_path):
    """Consent is naming the same builder: then the file is rebuilt by it (here it cannot fit the tensors)."""
    builder, marker = evil
    path = rewritten(digits_files / "pruned.safetensors", tmp_path / "evil.safetensors",
                     lambda m: m.update(source={"model": builder, "kwargs": {}}))
    with pytest.raises(VbpError):
        vbp.load_pruned(path, model=builder)
    assert marker.exists()


@pytest.mark.parametrize(
    "kwargs", [{"checkpoint_path": "/tmp/x.pth"}, {"pretrained_cfg_overlay": {"file": "/tmp/x.pth"}}, {"pretrained": True}]
)
def test_constructor_arguments_that_load_files_are_refused(digits_files, tmp_path, kwargs):
    path = rewritten(digits_files / "pruned.safetensors", tmp_path / "k.safetensors",
                     lambda m: m["source"]["kwargs"].update(kwargs))
    with pytest.raises(VbpError, match="load files or weights from elsewhere"):
        vbp.load_pruned(path)


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def pruned_llama():
    model = tiny_llama()
    ids = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    stats = vbp.calibrate(model, [{"input_ids": ids}], progress=False)
    return vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats), ids


def test_a_hub_kernel_named_by_a_config_is_refused(tmp_path):
    pruned, _ = pruned_llama()
    vbp.save_pruned(pruned, tmp_path / "p.safetensors")
    path = rewritten(tmp_path / "p.safetensors", tmp_path / "k.safetensors",
                     lambda m: m["source"]["config"].update(_attn_implementation="kernels-community/evil"))
    with pytest.raises(VbpError, match="attention implementation 'kernels-community/evil'"):
        vbp.load_pruned(path)


def test_a_crafted_width_is_refused_before_anything_is_allocated(digits_files, tmp_path):
    """A width of 2^35 (terabytes) against tensors of the saved width: refused by shapes on the meta device."""
    def widen(meta):
        name = next(iter(meta["sites"]))
        meta["sites"][name]["width"] = 2**35

    path = rewritten(digits_files / "pruned.safetensors", tmp_path / "w.safetensors", widen)
    with pytest.raises(VbpError, match=r"does not match the model it names .* the file is damaged"):
        vbp.load_pruned(path)
    for bad in (-1, 2.5, True, "8"):
        path = rewritten(digits_files / "pruned.safetensors", tmp_path / "b.safetensors",
                         lambda m, bad=bad: m["sites"][next(iter(m["sites"]))].update(width=bad))
        with pytest.raises(VbpError, match="malformed pruned-model metadata"):
            vbp.load_pruned(path)


def test_an_unpruned_architecture_larger_than_memory_is_refused(digits_files, tmp_path):
    """The unpruned architecture is built before it is narrowed: a crafted embedding table of 2^40 floats (the
    pruned tensors unchanged) would be allocated in full; its size is checked against free memory first."""
    def huge_head(meta):
        meta["source"]["kwargs"]["mlp_ratio"] = 2.0**36  # every MLP 2^36 x embed wide before narrowing

    path = rewritten(digits_files / "pruned.safetensors", tmp_path / "h.safetensors", huge_head)
    with pytest.raises(VbpError, match="more than this machine's .* free memory"):
        vbp.load_pruned(path)


def test_statistics_and_plans_name_no_code(digits_files, evil, tmp_path):
    """Statistics and plans describe numbers: a builder named in them is never imported."""
    builder, marker = evil
    stats_path = rewritten(digits_files / "stats.safetensors", tmp_path / "s.safetensors",
                           lambda m: m.update(model=builder, source={"model": builder}))
    stats = vbp.Stats.load(stats_path)
    plan = vbp.select(stats, 0.5)
    plan.save(tmp_path / "plan.json")
    doc = json.loads((tmp_path / "plan.json").read_text()) | {"model": builder, "source": {"model": builder}}
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    vbp.Plan.load(tmp_path / "plan.json")
    assert not marker.exists()


def test_tied_tensors_are_written_once_and_tied_again(tmp_path):
    pruned, ids = pruned_llama()
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    vbp.save_pruned(pruned, tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != ("model.embed_tokens.weight" in keys)  # one copy of the table
    untied_bytes = sum(v.numel() * v.element_size() for v in pruned.state_dict().values())
    tied_bytes = untied_bytes - pruned.lm_head.weight.numel() * 4
    assert os.path.getsize(tmp_path / "p.safetensors") < tied_bytes + 64 * 1024  # header and metadata only
    reloaded = vbp.load_pruned(tmp_path / "p.safetensors")
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, pruned(input_ids=ids).logits, rtol=0, atol=0)


def test_tied_metadata_naming_no_tensor_is_refused(tmp_path):
    pruned, _ = pruned_llama()
    vbp.save_pruned(pruned, tmp_path / "p.safetensors")
    path = rewritten(tmp_path / "p.safetensors", tmp_path / "t.safetensors",
                     lambda m: m.update(tied={"lm_head.weight": "no.such.tensor"}))
    with pytest.raises(VbpError, match="tied tensors that name no tensor"):
        vbp.load_pruned(path)
