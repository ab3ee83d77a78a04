"""The model-family seam: sites of HF, torchvision, gated and user-named MLPs, the compensation identity
in float64 for each, save/load round trips, compact, counts, and clear errors for bad specs."""

import copy

import pytest
import torch
import transformers
from conftest import mean_replaced
from timm.layers import SwiGLU
from torch import nn

import vbp
from vbp.families.spec import SiteSpec

G = torch.Generator().manual_seed(0)


def tokens(batch=3, length=7, vocab=100):
    return {"input_ids": torch.randint(0, vocab, (batch, length), generator=G)}


def images(batch=3, size=16):
    return torch.randn(batch, 3, size, size, generator=G, dtype=torch.float64)


def output(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def hf_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return transformers.BertModel(cfg).double().eval()


def hf_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return transformers.ViTModel(cfg).double().eval()


def hf_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2,
    )
    return transformers.LlamaModel(cfg).double().eval()


def tv_vit():
    kw = dict(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=37)
    torch.manual_seed(0)
    model = vbp.create_model("py:torchvision.models:VisionTransformer", **kw).double()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero, which would hide every change
    return model


def tv_swin():
    kw = dict(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=5)
    torch.manual_seed(0)
    return vbp.create_model("py:torchvision.models:SwinTransformer", **kw).double()


class HandWritten(nn.Module):
    """A module of our own: two residual MLPs whose layers no family knows by name."""

    _vbp_input_shape = (6,)  # what vbp.count and synthetic data feed it

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(6, 19), "down": nn.Linear(19, 6)}) for _ in range(2)
        )

    def forward(self, x):
        for s in self.stages:
            x = x + s["down"](torch.tanh(s["up"](x)))
        return x


def build_hand_written() -> nn.Module:
    torch.manual_seed(0)
    return HandWritten().double()


class SwiGLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = SwiGLU(6, 13)

    def forward(self, x):
        return self.mlp(x)


def swiglu_net():
    torch.manual_seed(0)
    return SwiGLUNet().double()


USER_SPEC = "stages.*:up->down"
CASES = {
    "hf_bert": (hf_bert, lambda: tokens(), None, 2),
    "hf_vit": (hf_vit, lambda: images(), None, 2),
    "hf_llama": (hf_llama, lambda: tokens(), None, 2),
    "tv_vit": (tv_vit, lambda: images(), None, 2),
    "tv_swin": (tv_swin, lambda: images(size=16), None, 2),
    "timm_swiglu": (swiglu_net, lambda: torch.randn(3, 5, 6, generator=G, dtype=torch.float64), None, 1),
    "user_spec": (
        lambda: vbp.create_model(f"py:{__name__}:build_hand_written"),
        lambda: torch.randn(4, 6, generator=G, dtype=torch.float64),
        USER_SPEC,
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compensation_identity_in_float64(case):
    make, data, spec, n_sites = CASES[case]
    model = make()
    sites = vbp.find_sites(model, spec=spec)
    assert len(sites) == n_sites
    stats = vbp.calibrate(model, [data() for _ in range(2)], progress=False)
    plan = vbp.select(stats, 0.4)
    pruned = vbp.prune(copy.deepcopy(model), plan, stats)
    assert vbp.families.site_widths(pruned) == plan.kept_widths
    x = data()
    with torch.no_grad():
        want = output(mean_replaced(model, plan, stats), x)
        got = output(pruned, x)
        assert (got - output(model, x)).abs().max() > 1e-6  # pruning changed something: the identity is not trivial
    tol = 64 * torch.finfo(torch.float64).eps * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


def test_gated_sites_narrow_all_three_layers_and_gain_a_bias():
    model = hf_llama()
    site = vbp.find_sites(model)[0]
    assert site.gated and site.producers == ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj")
    assert site.consumer_layer.bias is None
    stats = vbp.calibrate(model, [tokens()], progress=False)
    plan = vbp.select(stats, 0.5, scope="layer")
    pruned = vbp.prune(copy.deepcopy(model), plan, stats)
    mlp, kept = pruned.layers[0].mlp, plan.kept_widths["layers.0.mlp"]
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == kept < 37
    assert mlp.down_proj.bias is not None  # the folded means need a bias
    assert vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), compensation="none").layers[0].mlp.down_proj.bias is None


@pytest.mark.parametrize("case", list(CASES))
def test_save_and_load_round_trip(case, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))  # for py:test_families:...
    make, data, spec, _ = CASES[case]
    model = make()
    vbp.find_sites(model, spec=spec)
    stats = vbp.calibrate(model, [data()], progress=False)
    pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats)
    path = tmp_path / "pruned.safetensors"
    if case in ("hf_bert", "hf_vit", "hf_llama", "user_spec") or case.startswith("tv_"):
        vbp.save_pruned(pruned, path)
        named = vbp.models.model_name(pruned)
    else:  # a module built by hand: say how to rebuild it
        named = f"py:{__name__}:swiglu_net"
        vbp.save_pruned(pruned, path, name=named)
    loaded = vbp.load_pruned(path, model=named)  # a py: builder is run only when named
    assert vbp.families.site_widths(loaded) == vbp.families.site_widths(pruned)
    x = data()
    with torch.no_grad():
        torch.testing.assert_close(output(loaded, x), output(pruned, x), rtol=0, atol=0)


def test_torchvision_models_by_name_have_their_sites():
    with torch.device("meta"):
        for name, count, width in (("tv:vit_b_16", 12, 3072), ("tv:swin_t", 12, 384), ("tv:convnext_tiny", 18, 384)):
            sites = vbp.find_sites(vbp.create_model(name))
            assert len(sites) == count and sites[0].width == width, name


def test_compact_an_hf_and_a_torchvision_model():
    for make, data in ((hf_bert, tokens), (tv_vit, images)):
        model = make().float()
        compacted = vbp.compact(copy.deepcopy(model))
        assert sum(isinstance(m, vbp.CompactMlp) for m in compacted.modules()) == 2
        x = data()
        x = {k: v for k, v in x.items()} if isinstance(x, dict) else x.float()
        with torch.inference_mode():
            want = output(model, x)
            got = output(compacted, x)
        tol = 256 * torch.finfo(torch.float32).eps
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_count_of_a_text_model_follows_the_mlp_formula():
    model = hf_bert().float()
    stats = vbp.calibrate(model, [tokens()], progress=False)
    plan = vbp.select(stats, 0.5)
    pruned = vbp.prune(copy.deepcopy(model), plan, stats)
    (macs, params), (macs_p, params_p) = vbp.count(model), vbp.count(pruned)
    removed = sum(plan.widths.values()) - sum(plan.kept_widths.values())
    hidden, length = 16, vbp.families.hf.TEXT_LENGTH
    # each removed neuron: one fc1 row (hidden MACs per token) and one fc2 column (hidden MACs per token)
    assert macs - macs_p == removed * 2 * hidden * length
    assert params - params_p == removed * (2 * hidden + 1)  # fc1 row, fc1 bias, fc2 column


def test_count_includes_compacted_mlps():
    model = hf_bert().float()
    assert vbp.count(vbp.compact(copy.deepcopy(model)))[0] == vbp.count(model)[0]


def test_padding_does_not_change_the_statistics():
    model = hf_bert()
    lengths = [7, 4, 2]
    ids = torch.randint(1, 100, (3, 7), generator=G)
    mask = (torch.arange(7) < torch.tensor(lengths)[:, None]).long()
    padded = [{"input_ids": ids * mask, "attention_mask": mask}]
    unpadded = [{"input_ids": ids[i : i + 1, :n]} for i, n in enumerate(lengths)]
    for backend in ("torch", "triton"):
        with_padding = vbp.calibrate(model, padded, backend=backend, progress=False)
        one_by_one = vbp.calibrate(model, unpadded, backend="torch", progress=False)
        for site in one_by_one.sites:
            assert with_padding.sites[site].count == sum(lengths)
            tol = 1e3 * torch.finfo(torch.float64).eps if backend == "torch" else 1e-5  # Triton tiles are fp32
            scale = float(one_by_one.variance(site).max())
            torch.testing.assert_close(with_padding.mean(site), one_by_one.mean(site), rtol=0, atol=tol * scale**0.5)
            torch.testing.assert_close(with_padding.variance(site), one_by_one.variance(site), rtol=0, atol=tol * scale)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("blocks.*:up->down", "matches no module"),
        ("stages.*:up->missing", "module 'stages.0' has no 'missing'"),
        ("stages.*:up->up", "the consumer reads 6 features but the producers give 19"),
        ("stages.*:up", "is not PARENTS:FC1->FC2"),
        (SiteSpec("stages.*", ("up", "up", "up"), "down"), "one producer"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(vbp.VbpError, match=message):
        vbp.find_sites(HandWritten(), spec=spec)


def test_without_a_spec_errors_name_what_was_looked_for():
    with pytest.raises(vbp.VbpError, match="Looked for timm.*Hugging Face.*torchvision.*site spec"):
        vbp.find_sites(HandWritten())


def test_no_timm_in_the_core():
    """prune, the criteria, compact, calibration, checkpoints and the site API import no timm: only the timm
    family adapter (and the embedded digits model, fine-tuning's optimizer and timm's image transforms) do."""
    import ast
    import pathlib

    root = pathlib.Path(vbp.__file__).parent
    core = ("prune", "compact", "calibrate", "recorder", "checkpoint", "sites", "stats", "covariance", "select", "plan")
    files = [root / f"{name}.py" for name in core] + sorted((root / "criteria").glob("*.py"))
    files += sorted((root / "compensation").glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "timm"], path.name


def test_cli_prunes_a_user_model_by_spec(tmp_path, monkeypatch, capsys):
    from vbp.cli import main

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    args = ["--model", "py:test_families:build_hand_written", "--sites", USER_SPEC, "--data", "synthetic"]
    out = tmp_path / "out"
    assert main(["prune", *args, "--ratio", "0.5", "--batch-size", "8", "--output", str(out)]) == 0
    pruned = vbp.load_pruned(out / "model.safetensors", model=args[1])
    assert sum(vbp.families.site_widths(pruned).values()) == 19
    assert main(["prune", *args[:2], "--data", "synthetic", "--ratio", "0.5"]) == 2
    assert "site spec" in capsys.readouterr().err  # without --sites: no family knows these layers


def test_hf_vision_model_calibrates_on_an_image_folder_through_its_image_processor(tmp_path):
    from PIL import Image

    from vbp.cli import main

    model = hf_vit().float()
    model.save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(20, 24, 3, generator=G) * 255).to(torch.uint8).numpy()).save(
            tmp_path / "images" / f"{i}.png"
        )
    stats = tmp_path / "s.safetensors"
    assert main(["calibrate", "--model", f"hf:{tmp_path / 'vit'}", "--data", str(tmp_path / "images"),
                 "--batch-size", "2", "--stats", str(stats)]) == 0
    assert all(m.count == 3 * 5 for m in vbp.Stats.load(stats).sites.values())  # 4 patches + [CLS] per image


def test_torchvision_vit_b_16_counts_as_deit_base():
    """Same architecture (paper Table 10: 17.58 GMACs, 86.57 M params); torchvision's attention runs as one fused
    op in eval mode, which the count must see."""
    macs, params = vbp.count(vbp.create_model("tv:vit_b_16"))
    assert (round(macs / 1e9, 2), round(params / 1e6, 2)) == (17.58, 86.57)
