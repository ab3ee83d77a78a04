"""Hardening II, loading models: Hugging Face folders keep their head, folders and hub ids that cannot load say
why in one line, no network fails at once (cached weights still load), --num-classes only where it applies,
timm models count and read images at their own size, and a tokenizer larger than the embedding table is refused."""

import copy
import json

import huggingface_hub
import pytest
import safetensors.torch
import torch
import transformers
from PIL import Image

import vbp
from vbp.cli import main
from vbp.families import hf

G = torch.Generator().manual_seed(0)


def tiny_llama_lm():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert_mlm():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return transformers.BertForMaskedLM(cfg).eval()


def saved(model, folder):
    model.save_pretrained(folder)
    return folder


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def cli_error(capsys, *args) -> str:
    """The one-line error the CLI gives for `args` (exit status 2, no traceback)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, with empty Hugging Face and torch.hub caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path


def put_in_hub_cache(root, repo: str, files: dict) -> None:
    """Lay files out as huggingface_hub's cache does for `repo` at its main revision."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / "hf-cache" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)


@pytest.mark.parametrize("make", [tiny_llama_lm, tiny_bert_mlm])
def test_hf_folder_loads_the_head_its_config_names_and_round_trips_silent(make, tmp_path):
    """Silent: AutoModel dropped the head config.json names; the loaded model is the head class with the saved
    logits, its MLPs are found, and save_pruned/load_pruned rebuild the class (tied weights included)."""
    model = make()
    loaded = vbp.create_model(f"hf:{saved(model, tmp_path / 'm')}")
    ids = torch.randint(0, 100, (2, 7), generator=G)
    assert type(loaded) is type(model)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    assert len(vbp.find_sites(loaded)) == 2
    stats = vbp.calibrate(loaded, [{"input_ids": ids}], progress=False)
    pruned = vbp.prune(copy.deepcopy(loaded), vbp.select(stats, 0.5), stats)
    vbp.save_pruned(pruned, tmp_path / "pruned.safetensors")
    reloaded = vbp.load_pruned(tmp_path / "pruned.safetensors")
    assert type(reloaded) is type(model)
    assert vbp.models.model_source(reloaded)["class"] == type(model).__name__
    torch.testing.assert_close(logits(reloaded, ids), logits(pruned, ids), rtol=0, atol=0)
    tied = pruned.get_input_embeddings().weight is pruned.get_output_embeddings().weight
    assert (reloaded.get_input_embeddings().weight is reloaded.get_output_embeddings().weight) == tied


def test_hf_folder_without_architectures_loads_the_base_model(tmp_path):
    folder = saved(tiny_llama_lm(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    assert type(vbp.create_model(f"hf:{folder}")) is transformers.LlamaModel


def test_hf_folder_naming_an_unknown_architecture_is_an_error_silent(tmp_path, capsys):
    """Silent: an architecture transformers lacks was loaded as the base model, its head dropped."""
    folder = saved(tiny_llama_lm(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["LlamaForTimeTravel"]
    (folder / "config.json").write_text(json.dumps(config))
    err = cli_error(capsys, "prune", "--model", f"hf:{folder}", "--data", "synthetic", "--ratio", "0.5")
    assert "names the architecture LlamaForTimeTravel, which transformers" in err
    assert "delete \"architectures\"" in err


@pytest.mark.parametrize("content", [None, "weights.bin"])
def test_hf_folder_without_config_json_message(content, tmp_path, capsys):
    """Message: an empty folder, or one without config.json, is not a Hugging Face model folder."""
    folder = tmp_path / "m"
    folder.mkdir()
    if content:
        (folder / content).write_bytes(b"\0")
    err = cli_error(capsys, "prune", "--model", f"hf:{folder}", "--data", "synthetic", "--ratio", "0.5")
    assert f"{folder} has no config.json: not a Hugging Face model folder; give the folder save_pretrained wrote" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "deit_tiny_patch16_224", "--pretrained"],
        ["--model", "tv:squeezenet1_1", "--pretrained"],
        ["--model", "hf:someorg/somemodel"],
    ],
    ids=["timm", "tv", "hf"],
)
def test_no_network_fails_at_once_message(args, offline, capsys):
    """Message: without a network (and nothing cached) the download is not tried for a minute: one line says so."""
    err = cli_error(capsys, "prune", *args, "--ratio", "0.5", "--data", "synthetic")
    assert "no network: give --checkpoint or a local folder" in err


def test_unreachable_hub_is_found_without_offline_variables_message(monkeypatch, tmp_path):
    """Message: with no HF_HUB_OFFLINE, a failed connection to the Hub is what says there is no network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    def unreachable(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(hf.socket, "create_connection", unreachable)
    hf._connects.cache_clear()
    try:
        with pytest.raises(vbp.VbpError, match="no network: give --checkpoint or a local folder"):
            vbp.create_model("deit_tiny_patch16_224", pretrained=True)
    finally:
        hf._connects.cache_clear()


def test_cached_weights_load_offline_silent(offline):
    """Silent: the no-network check must not stand before weights already in the caches (timm's on the Hub
    cache, torchvision's in torch.hub's, an hf: id's in the Hub cache): they load, and are the cached ones."""
    deit = vbp.create_model("deit_tiny_patch16_224")
    put_in_hub_cache(
        offline, "timm/deit_tiny_patch16_224.fb_in1k",
        {"model.safetensors": lambda p: safetensors.torch.save_file(deit.state_dict(), str(p))},
    )
    loaded = vbp.create_model("deit_tiny_patch16_224", pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in deit.state_dict().items())

    squeeze = vbp.create_model("tv:squeezenet1_1")
    (offline / "torch-home" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(squeeze.state_dict(), offline / "torch-home" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    loaded = vbp.create_model("tv:squeezenet1_1", pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in squeeze.state_dict().items())

    llama = tiny_llama_lm()
    put_in_hub_cache(offline, "someorg/tiny", {"": lambda p: llama.save_pretrained(p)})
    loaded = vbp.create_model("hf:someorg/tiny")
    ids = torch.randint(0, 100, (2, 7), generator=G)
    assert type(loaded) is transformers.LlamaForCausalLM
    torch.testing.assert_close(logits(loaded, ids), logits(llama, ids), rtol=0, atol=0)


@pytest.mark.parametrize(
    "model, message",
    [
        ("botnet50ts_256", "timm has no pretrained weights for 'botnet50ts_256': leave out --pretrained, or give"),
        ("deit_tiny_patch16_224.nosuchtag", "deit_tiny_patch16_224.nosuchtag' with its pretrained weights: Invalid"),
    ],
    ids=["no-weights", "unknown-tag"],
)
def test_pretrained_timm_model_without_such_weights_message(model, message, capsys):
    """Message: timm's RuntimeError (a traceback) for a model or tag it has no weights for."""
    assert message in cli_error(capsys, "prune", "--model", model, "--pretrained", "--ratio", "0.5")


def test_num_classes_on_hf_and_py_models_message(tmp_path, capsys, monkeypatch):
    """Message: --num-classes went to from_pretrained (an unused config attribute) or to the user's builder."""
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    folder = saved(tiny_llama_lm(), tmp_path / "m")
    for model in (f"hf:{folder}", "py:test_families:build_hand_written"):
        err = cli_error(capsys, "prune", "--model", model, "--num-classes", "3", "--data", "synthetic", "--ratio", ".5")
        assert f"--num-classes applies to timm and tv: models only, not {model}: leave it out" in err


def test_hf_pretrained_changes_nothing_and_warns_of_no_random_weights(tmp_path, capsys):
    """--pretrained with hf: (whose weights always load) is harmless, and no random-weights warning is given."""
    folder = saved(tiny_llama_lm(), tmp_path / "m")
    args = ["prune", "--model", f"hf:{folder}", "--data", "synthetic", "--ratio", "0.5", "--batch-size", "4"]
    assert main([*args, "--pretrained", "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    assert "random weights" not in capsys.readouterr().err
    a, b = (vbp.load_pruned(tmp_path / d / "model.safetensors") for d in "ab")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_eval_warns_when_the_reference_of_a_pruned_model_has_random_weights_silent(tmp_path, capsys):
    """Silent: the unpruned reference rebuilt for --pruned skipped the random-weights warning the model gets."""
    for label in "ab":
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            pixels = (torch.rand(32, 32, 3, generator=G) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    for seed, status in ((0, 0), (1, 2)):  # the command line's random weights come from seed 0
        torch.manual_seed(seed)
        model = vbp.create_model("deit_tiny_patch16_224", img_size=32, num_classes=2)
        stats = vbp.calibrate(model, [torch.randn(2, 3, 32, 32, generator=G)], progress=False)
        vbp.save_pruned(vbp.prune(model, vbp.select(stats, 0.5), stats), tmp_path / "pruned.safetensors")
        args = ["eval", "--pruned", str(tmp_path / "pruned.safetensors"), "--data", str(tmp_path / "images")]
        assert main([*args, "--batch-size", "2"]) == status
        err = capsys.readouterr().err
        assert "warning: deit_tiny_patch16_224 has random weights" in err
    assert "was pruned from other weights" in err  # silent before: retention against another model


def deit_tiny_macs(size: int) -> int:
    """DeiT-Tiny's MACs at size x size under fvcore's conventions (layer norms 5 per element)."""
    d, hidden, depth, patch, classes = 192, 768, 12, 16, 1000
    patches = (size // patch) ** 2
    t = patches + 1
    block = 2 * 5 * t * d + t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * hidden
    return patches * 3 * patch * patch * d + depth * block + 5 * t * d + d * classes


@pytest.mark.parametrize("size", [224, 160])
def test_count_of_a_timm_model_at_its_own_img_size_message(size):
    """Message: count() fed a model made with img_size=160 its pretrained config's 224 (an assertion deep in timm)."""
    model = vbp.create_model("deit_tiny_patch16_224", img_size=size)
    assert vbp.count(model)[0] == deit_tiny_macs(size)


def test_images_are_read_at_a_timm_models_own_img_size_message(tmp_path):
    """Message: images were resized to the pretrained config's 224 for a model made with img_size=32."""
    for i in range(2):
        Image.fromarray((torch.rand(40, 48, 3, generator=G) * 255).to(torch.uint8).numpy()).save(tmp_path / f"{i}.png")
    model = vbp.create_model("deit_tiny_patch16_224", img_size=32)
    data = vbp.workflows.data.dataset(str(tmp_path), model)
    assert data[0][0].shape == (3, 32, 32)
    stats = vbp.calibrate(model, vbp.workflows.data.loader(data, 2), progress=False)
    assert all(m.count == 2 * 5 for m in stats.sites.values())  # 4 patches + the class token per image


def bert_with_tokenizer(folder, tokens: int):
    """A tiny BERT (100 embedding rows) saved with a WordPiece tokenizer of `tokens` tokens."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(tokens - 5)]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def test_tokenizer_larger_than_the_embedding_table_message(tmp_path, capsys):
    """Message: ids past the embedding table failed deep in the forward pass (or, on GPU, a device assert)."""
    sentences = tmp_path / "s.txt"
    sentences.write_text("w1 w2 w3\nw4 w140\n")  # w140: [UNK] to the small tokenizer, id 145 to the large one
    fits = bert_with_tokenizer(tmp_path / "fits", 100)
    args = ["calibrate", "--data", str(sentences), "--stats"]
    assert main([*args, str(tmp_path / "a.safetensors"), "--model", f"hf:{fits}"]) == 0
    big = bert_with_tokenizer(tmp_path / "big", 150)
    err = cli_error(capsys, *args, str(tmp_path / "b.safetensors"), "--model", f"hf:{big}")
    assert f"the tokenizer of {big} has 150 tokens but the model's embedding table only 100 rows" in err
    assert not (tmp_path / "b.safetensors").exists()
