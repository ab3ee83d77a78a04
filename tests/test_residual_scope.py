"""scope="residual": neurons ranked across layers by their cost relative to the residual stream their MLP writes
into (`vbp.streams`), and the defaults for gated MLPs that use it. Checked against float64 computations made here
from the model itself, and against the paper's VBP on the real SmolLM2 (tests/test_smollm2.py has the model)."""

import json

import pytest
import torch
import transformers

import vbp
from vbp.cli import main
from vbp.errors import VbpError
from vbp.streams import stream_block


def tiny_llama(layers=3, vocab=100):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def padded_batch(seed=0, batch=4, tokens=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, tokens), generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    mask[0, 5:] = 0
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def block_inputs(model, batch) -> list[torch.Tensor]:
    """Every decoder layer's input over the real tokens, float64 [N, D], by hooks independent of vbp's."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].double()[batch["attention_mask"].bool()]))
             for layer in model.model.layers]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    return seen


def test_stream_statistics_are_the_log_energy_of_each_block_input_over_real_tokens():
    model, batch = tiny_llama(), padded_batch()
    stats = vbp.calibrate(model, [batch], progress=False)
    for site, x in zip(vbp.find_sites(model), block_inputs(model, batch)):
        assert stream_block(model, site) == site.name.removesuffix(".mlp")
        log_energy = x.square().sum(-1).log()
        moments = stats.streams[site.name]
        assert moments.count == int(batch["attention_mask"].sum())
        eps = 64 * torch.finfo(torch.float64).eps * float(log_energy.abs().max())
        assert abs(float(moments.mean) - float(log_energy.mean())) <= eps
        assert abs(float(moments.m2) - float((log_energy - log_energy.mean()).square().sum())) <= eps * len(log_energy)


def test_stream_statistics_merge_over_shards_and_survive_a_file(tmp_path):
    model = tiny_llama()
    a, b = padded_batch(1), padded_batch(2)
    whole = vbp.calibrate(model, [a, b], progress=False)
    merged = vbp.calibrate(model, [a], progress=False).merge(vbp.calibrate(model, [b], progress=False))
    whole.save(tmp_path / "s.safetensors")
    loaded = vbp.Stats.load(tmp_path / "s.safetensors")
    for name, m in whole.streams.items():
        torch.testing.assert_close(merged.streams[name].mean, m.mean, rtol=1e-12, atol=0)
        assert torch.equal(loaded.streams[name].mean, m.mean) and loaded.streams[name].count == m.count


def test_residual_scope_ranks_output_costs_relative_to_the_stream():
    """The plan keeps, across all sites, the neurons of highest var_j ||W2[:, j]||^2 / exp E[log ||x||^2], computed
    here in float64 from the hidden values and block inputs themselves."""
    model, batch = tiny_llama(), padded_batch()
    stats = vbp.calibrate(model, [batch], progress=False)
    hidden = []
    sites = vbp.find_sites(model)
    hooks = [s.consumer_layer.register_forward_pre_hook(lambda m, a: hidden.append(a[0].double()[batch["attention_mask"].bool()]))
             for s in sites]
    streams = block_inputs(model, batch)
    for h in hooks:
        h.remove()
    costs = []
    for site, h, x in zip(sites, hidden, streams):
        w2 = site.consumer_layer.weight.double()
        costs.append(h.var(0, correction=0) * w2.square().sum(0) / x.square().sum(-1).log().mean().exp())
    flat = torch.cat(costs)
    n_prune = round(0.4 * flat.numel())
    cut = torch.sort(flat).values[n_prune - 1]
    plan = vbp.select(stats, 0.4, scope="residual", criterion="weighted_variance", model=model)
    for site, cost in zip(sites, costs):
        assert set(plan.keep[site.name]) == set(torch.nonzero(cost > cut).flatten().tolist())
    # the stream's size matters: a plan that ignores it (global) keeps other neurons on this model
    assert plan.keep != vbp.select(stats, 0.4, scope="global", criterion="weighted_variance", model=model).keep


def test_residual_scope_refuses_what_it_cannot_compare():
    model = tiny_llama()
    stats = vbp.calibrate(model, [padded_batch()], progress=False)
    with pytest.raises(VbpError, match="criterion 'variance' does not score in those units"):
        vbp.select(stats, 0.5, scope="residual", criterion="variance")
    stats.streams = {}
    with pytest.raises(VbpError, match="needs the size of the residual stream"):
        vbp.select(stats, 0.5, scope="residual", criterion="weighted_variance", model=model)


def test_prune_defaults_for_gated_mlps_are_said_and_recorded(tmp_path, capsys):
    from vbp.workflows.minilm import minilm_dir

    folder = tmp_path / "m"
    tiny_llama(vocab=30522).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(folder)  # a real tokenizer
    (tmp_path / "t.txt").write_text("\n".join(f"sentence number {i} of a few words" for i in range(12)))
    args = ["prune", "--model", f"hf:{folder}", "--data", str(tmp_path / "t.txt"), "--ratio", "0.4", "--batch-size", "4"]
    assert main([*args, "--output", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert "gated MLPs: pruning with --criterion weighted_variance --compensation affine --scope residual" in err
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["scope"] == "residual" and plan["criterion"]["name"] == "weighted_variance"
    pruned = vbp.load_pruned(tmp_path / "p" / "model.safetensors")
    assert pruned.__dict__["_vbp_pruning"]["compensation"]["name"] == "affine"
    # what the user names is kept, and the rest still defaults
    assert main([*args, "--criterion", "variance", "--output", str(tmp_path / "q")]) == 0
    assert "--compensation affine --scope layer" in capsys.readouterr().err
    plan = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert plan["scope"] == "layer" and plan["criterion"]["name"] == "variance"


def test_plain_mlps_keep_the_papers_vbp(digits_files, tmp_path, capsys):
    assert main(["prune", "--stats", str(digits_files / "stats.safetensors"), "--ratio", "0.5",
                 "--output", str(tmp_path / "p")]) == 0
    assert "gated MLPs" not in capsys.readouterr().err
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["scope"] == "global" and plan["criterion"]["name"] == "variance"


def test_a_model_without_repeated_blocks_falls_back_to_per_layer(capsys):
    """A gated MLP whose consumer sits in no block list has no stream to compare with: per layer, said."""
    from vbp.commands.options import settle_method

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.up, self.down = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))

    model = torch.nn.Module()
    model.mlp = Mlp()
    vbp.find_sites(model, spec="mlp:gate,up->down")
    args = type("Args", (), dict(criterion=None, compensation=None, scope=None, no_compensation=False, ratio=0.5))()
    settle_method(args, model)
    assert (args.criterion, args.compensation, args.scope) == ("weighted_variance", "affine", "layer")
    assert "--scope layer" in capsys.readouterr().err
