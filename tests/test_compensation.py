"""Compensation strategies and the criteria that use covariances, against float64 references: least-squares
optimality (torch.linalg.lstsq on the same activations), exactness on constructed networks, clear errors."""

import copy
import json

import pytest
import torch
import transformers
from timm.layers import Mlp
from torch import nn

import vbp
from vbp.compensation.affine import affine_predictor
from vbp.covariance import CoMoments
from vbp.criteria.redundancy import redundancy_scores
from vbp.families.spec import SiteSpec
from vbp.fingerprint import weights_fingerprint
from vbp.model_attributes import PRUNING

EPS = torch.finfo(torch.float64).eps


def timm_site_model(hidden=24, act=nn.GELU):
    torch.manual_seed(0)
    return nn.Sequential(Mlp(6, hidden, out_features=5, act_layer=act)).double().eval()


def llama_site_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=6, intermediate_size=24, num_attention_heads=2, num_key_value_heads=2)
    mlp = transformers.models.llama.modeling_llama.LlamaMLP(cfg).double().eval()
    vbp.find_sites(mlp, spec=SiteSpec("", ("gate_proj", "up_proj"), "down_proj"))  # the module itself is the site
    return mlp


def data(n=400, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 6, generator=g, dtype=torch.float64)]


def hidden(model, x):
    site = vbp.find_sites(model)[0]
    seen = []
    handle = site.observe(seen.append)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def output_error(model, pruned, x):
    with torch.no_grad():
        return float((pruned(x) - model(x)).square().sum())


@pytest.mark.parametrize("make", [timm_site_model, llama_site_model], ids=["mlp", "gated"])
def test_affine_is_least_squares_on_the_calibration_data(make):
    model, x = make(), data()
    stats = vbp.calibrate(model, x, covariance=True, progress=False)
    plan = vbp.select(stats, 0.5)
    site = vbp.find_sites(model)[0]
    errors = {
        name: output_error(model, vbp.prune(copy.deepcopy(model), plan, stats, compensation=c), x[0])
        for name, c in (("none", "none"), ("mean", vbp.Mean()), ("ridge", vbp.Affine(1e-6)), ("ls", vbp.Affine(0.0)))
    }
    assert errors["ls"] <= errors["ridge"] <= errors["mean"] <= errors["none"]
    assert errors["ls"] < 0.9 * errors["mean"]  # a real gain, not a tie

    # ridge 0 is the best affine predictor of h_P from h_K: lstsq on the activations themselves
    h = hidden(model, x[0])
    keep, pruned = plan.kept(site.name), plan.pruned(site.name)
    design = torch.cat([h[:, keep], torch.ones(len(h), 1, dtype=h.dtype)], 1)
    beta = torch.linalg.lstsq(design, h[:, pruned]).solution
    a, c = affine_predictor(stats.covariance(site.name), stats.covariances[site.name].mean, keep, pruned, 0.0)
    cond = float(torch.linalg.cond(design))
    torch.testing.assert_close(a, beta[:-1].T, rtol=0, atol=cond * 1e3 * EPS * float(beta.abs().max()))
    w2_p = site.consumer_weights()[0][:, pruned].detach()
    residual = h[:, pruned] - design @ beta
    best = float((residual @ w2_p.T).square().sum())
    assert errors["ls"] == pytest.approx(best, rel=cond * 1e3 * EPS)


def test_copies_of_kept_neurons_are_compensated_exactly():
    model = timm_site_model(hidden=16)
    mlp = model[0]
    with torch.no_grad():  # neurons 8..15 are copies of 0..7
        mlp.fc1.weight[8:] = mlp.fc1.weight[:8]
        mlp.fc1.bias[8:] = mlp.fc1.bias[:8]
    x = data()
    stats = vbp.calibrate(model, x, covariance=True, progress=False)
    plan = vbp.Plan("", 0.5, "layer", {"0": 16}, {"0": list(range(8))})
    pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.0))
    test = data(seed=7)[0]
    with torch.no_grad():
        want = model(test)
        torch.testing.assert_close(pruned(test), want, rtol=0, atol=64 * EPS * float(want.abs().max()))


def test_linear_combinations_are_compensated_exactly():
    # identity activation: h = W1 x + b1 lies in a 6-dimensional affine space, so 6 kept neurons predict all
    model = timm_site_model(hidden=16, act=nn.Identity)
    x = data()
    stats = vbp.calibrate(model, x, covariance=True, progress=False)
    plan = vbp.Plan("", 0.625, "layer", {"0": 16}, {"0": [0, 2, 5, 9, 11, 14]})
    pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.0))
    test = data(seed=7)[0]
    with torch.no_grad():
        want = model(test)
        torch.testing.assert_close(pruned(test), want, rtol=0, atol=1e4 * EPS * float(want.abs().max()))


def test_split_batches_merge_to_the_covariance_of_the_whole_even_far_from_zero():
    g = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(3000, 7, generator=g, dtype=torch.float64) @ torch.randn(7, 7, generator=g, dtype=torch.float64)
    want = torch.cov(x.T, correction=0)
    merged = CoMoments.zeros(7)
    for chunk in x.split(211):
        merged = merged.merge(CoMoments.of(chunk, merged.mean if merged.count else None))
    # the mean itself is known to eps * 1e4 only; through Chan's term that bounds the covariance's accuracy
    tol = 64 * EPS * 1e4 * float(want.diagonal().max().sqrt())
    torch.testing.assert_close(merged.covariance, want, rtol=0, atol=tol)
    torch.testing.assert_close(CoMoments.of(x).covariance, want, rtol=0, atol=tol)
    assert merged.count == 3000


def test_weighted_variance_and_redundancy_criteria():
    model = timm_site_model(hidden=16)
    mlp = model[0]
    with torch.no_grad():  # neuron 15 copies neuron 3, with a large consumer column: high variance, yet redundant
        mlp.fc1.weight[15], mlp.fc1.bias[15] = 3 * mlp.fc1.weight[3], 3 * mlp.fc1.bias[3]
        mlp.fc2.weight[:, 15] *= 10
    x = data()
    stats = vbp.calibrate(model, x, covariance=True, progress=False)
    norms = mlp.fc2.weight.detach().double().square().sum(0)
    weighted = vbp.criteria.neuron_scores("weighted_variance", stats, model)["0"]
    torch.testing.assert_close(weighted, stats.variance("0") * norms, rtol=1e-12, atol=0)
    redundancy = vbp.criteria.neuron_scores("redundancy", stats, model)["0"]
    # GELU makes copy 15 not exactly linear in 3, but nearly: it (or 3) is the first to go
    assert int(redundancy.argmin()) in (3, 15)
    assert float(weighted[15]) > float(weighted.median())  # what the variance-based scores would keep
    plan = vbp.select(stats, 0.25, criterion="redundancy", model=model)
    assert 15 not in plan.keep["0"] or 3 not in plan.keep["0"]
    # scores follow the greedy removal order: non-decreasing along it, so global ranking keeps that order
    assert torch.equal(redundancy_scores(stats.covariance("0"), norms).sort().values, redundancy.sort().values)


def test_affine_without_covariance_or_with_singular_statistics_is_a_clear_error(tmp_path):
    model = timm_site_model(hidden=16)
    stats = vbp.calibrate(model, data(), progress=False)
    plan = vbp.select(stats, 0.5)
    with pytest.raises(vbp.VbpError, match="lack; calibrate again with covariance"):
        vbp.prune(copy.deepcopy(model), plan, stats, compensation="affine")
    with pytest.raises(vbp.VbpError, match="redundancy criterion needs the covariance"):
        vbp.select(stats, 0.5, criterion="redundancy", model=model)
    with pytest.raises(vbp.VbpError, match="unknown compensation"):
        vbp.prune(copy.deepcopy(model), plan, stats, compensation="median")
    with torch.no_grad():  # two kept neurons that are exact copies: S_KK is singular
        model[0].fc1.weight[1], model[0].fc1.bias[1] = model[0].fc1.weight[0], model[0].fc1.bias[0]
    stats = vbp.calibrate(model, data(), covariance=True, progress=False)
    plan = vbp.Plan("", 0.5, "layer", {"0": 16}, {"0": list(range(8))})
    with pytest.raises(vbp.VbpError, match="site '0'.*not positive definite"):
        vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.0))
    vbp.prune(copy.deepcopy(model), plan, stats, compensation="affine")  # the default ridge copes
    with pytest.raises(vbp.VbpError, match="ridge must be a finite number at least 0"):
        vbp.Affine(ridge=-1.0)


def test_statistics_files_keep_covariances_and_version_1_files_load(tmp_path):
    model = timm_site_model()
    stats = vbp.calibrate(model, data(), covariance=True, progress=False)
    stats.save(tmp_path / "v2.safetensors")
    loaded = vbp.Stats.load(tmp_path / "v2.safetensors")
    assert torch.equal(loaded.covariance("0"), stats.covariance("0"))
    # a version 1 file, as vbp 0.1 wrote it: moments only
    from safetensors.torch import save_file

    m = stats.sites["0"]
    meta = {"format": "vbp-stats/1", "model": "", "sites": ["0"], "widths": {"0": 24}, "counts": {"0": m.count},
            "batches": 1, "images": 400, "skipped": {}}
    save_file({"0/mean": m.mean, "0/m2": m.m2}, tmp_path / "v1.safetensors", metadata={"vbp": json.dumps(meta)})
    v1 = vbp.Stats.load(tmp_path / "v1.safetensors")
    assert torch.equal(v1.variance("0"), stats.variance("0")) and not v1.covariances
    meta["counts"] = {"0": -3}
    save_file({"0/mean": m.mean, "0/m2": m.m2}, tmp_path / "bad.safetensors", metadata={"vbp": json.dumps(meta)})
    with pytest.raises(vbp.VbpError, match="malformed.*non-negative integer"):
        vbp.Stats.load(tmp_path / "bad.safetensors")


def test_the_compensation_used_is_saved_with_the_model(tmp_path):
    model = vbp.create_model("deit_tiny_patch16_224", img_size=32)
    g = torch.Generator().manual_seed(0)
    stats = vbp.calibrate(model, [torch.randn(2, 3, 32, 32, generator=g)], covariance=True, progress=False)
    pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.3), stats, compensation="affine")
    vbp.save_pruned(pruned, tmp_path / "m.safetensors")
    record = vbp.load_pruned(tmp_path / "m.safetensors").__dict__[PRUNING]
    assert record == {
        "criterion": {"name": "variance", "version": 1},
        "compensation": {"name": "affine", "version": 1, "ridge": 0.01},
        "ratio": 0.3,
        "weights": weights_fingerprint(model),  # of the unpruned model
    }


def test_covariance_survives_an_interrupted_calibration(tmp_path):
    model, x = timm_site_model(), data(n=90)
    batches = list(x[0].split(30))
    whole = vbp.calibrate(model, batches, covariance=True, progress=False)
    ckpt = tmp_path / "partial.safetensors"
    vbp.calibrate(model, batches[:2], covariance=True, progress=False, checkpoint=ckpt, checkpoint_every=1)
    resumed = vbp.calibrate(model, batches, covariance=True, progress=False, checkpoint=ckpt, resume=True)
    want = whole.covariance("0")
    torch.testing.assert_close(resumed.covariance("0"), want, rtol=0, atol=64 * EPS * float(want.abs().max()))
    with pytest.raises(vbp.VbpError, match="same covariance option"):
        vbp.calibrate(model, batches, progress=False, checkpoint=ckpt, resume=True)
