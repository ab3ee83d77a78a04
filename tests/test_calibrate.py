"""calibrate() gathers exactly the post-activation statistics of every token or position."""

import pytest
import torch
from conftest import random_batches, small_model

import vbp


def reference_stats(model, batches):
    """float64 two-pass over all post-activation values, collected without vbp's hooks."""
    seen = {s.name: [] for s in vbp.find_sites(model)}
    hooks = []
    for s in vbp.find_sites(model):

        def keep(module, inputs, out, name=s.name, dim=s.channel_dim):
            seen[name].append(out.detach().movedim(dim, -1).reshape(-1, out.shape[dim]).double())

        hooks.append(s.activation.register_forward_hook(keep))
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    out = {}
    for name, parts in seen.items():
        x = torch.cat(parts)
        mean = x.mean(0)
        out[name] = (x.shape[0], mean, ((x - mean) ** 2).mean(0))
    return out


@pytest.mark.parametrize(
    "name,kwargs,samples_per_image",
    [
        ("deit_tiny_patch16_224", dict(img_size=32), 5),
        ("convnext_atto", dict(), 4),  # last stage at 64x64 input: 2x2 positions
        ("convnext_atto", dict(conv_mlp=True), 4),
    ],
)
def test_calibrate_matches_reference(name, kwargs, samples_per_image):
    model = small_model(name, **kwargs)
    batches = random_batches(3, 2, (3, 32, 32) if "deit" in name else (3, 64, 64))
    stats = vbp.calibrate(model, batches, progress=False)
    ref = reference_stats(model, batches)
    assert stats.model == name
    assert list(stats.sites) == list(ref)
    last = list(ref)[-1]
    assert stats.sites[last].count == 6 * samples_per_image
    for site, (count, mean, var) in ref.items():
        assert stats.sites[site].count == count
        torch.testing.assert_close(stats.mean(site), mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(stats.variance(site), var, rtol=1e-9, atol=1e-12)


def test_limits_and_label_tuples(deit_tiny_small):
    batches = [(b, torch.zeros(4, dtype=torch.int64)) for b in random_batches(5, 4, (3, 32, 32))]
    assert vbp.calibrate(deit_tiny_small, batches, num_batches=2, progress=False).sites["blocks.0.mlp"].count == 8 * 5
    stats = vbp.calibrate(deit_tiny_small, batches, num_samples=6, progress=False)
    assert stats.sites["blocks.0.mlp"].count == 6 * 5
    ref = reference_stats(deit_tiny_small, [batches[0][0], batches[1][0][:2]])
    torch.testing.assert_close(stats.variance("blocks.3.mlp"), ref["blocks.3.mlp"][2], rtol=1e-9, atol=1e-12)


def test_non_finite_activations_name_site_and_batch(deit_tiny_small):
    batches = random_batches(3, 2, (3, 32, 32))
    batches[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(vbp.VbpError, match=r"'blocks\.0\.mlp' in calibration batch 1"):
        vbp.calibrate(deit_tiny_small, batches, progress=False)
    assert not deit_tiny_small.blocks[0].mlp.fc2._forward_pre_hooks  # hooks removed after a failure


def test_empty_data_and_bad_limits(deit_tiny_small):
    with pytest.raises(vbp.VbpError, match="no inputs"):
        vbp.calibrate(deit_tiny_small, [], progress=False)
    with pytest.raises(vbp.VbpError, match="num_batches"):
        vbp.calibrate(deit_tiny_small, random_batches(1, 1, (3, 32, 32)), num_batches=0, progress=False)


@pytest.mark.parametrize(
    "name,kwargs,input_size",
    [
        ("deit_tiny_patch16_224", dict(img_size=32), (3, 32, 32)),
        ("convnext_atto", dict(conv_mlp=True), (3, 64, 64)),  # NCHW hidden tensors through the fused kernel
        ("convnext_atto", dict(), (3, 64, 64)),
    ],
)
def test_triton_and_torch_backends_agree(name, kwargs, input_size):
    model = small_model(name, **kwargs)
    batches = random_batches(2, 2, input_size)
    acts = [s.activation for s in vbp.find_sites(model)]
    with torch.no_grad():
        plain = model(batches[0])
    by_torch = vbp.calibrate(model, batches, backend="torch", progress=False)
    by_triton = vbp.calibrate(model, batches, backend="triton", progress=False)
    for site in by_torch.sites:
        assert by_triton.sites[site].count == by_torch.sites[site].count
        torch.testing.assert_close(by_triton.mean(site), by_torch.mean(site), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_triton.variance(site), by_torch.variance(site), rtol=1e-4, atol=1e-7)
    assert [s.activation for s in vbp.find_sites(model)] == acts  # the fused stand-ins are removed again
    with torch.no_grad():
        torch.testing.assert_close(model(batches[0]), plain, rtol=0, atol=0)


def test_triton_backend_on_cpu_needs_the_interpreter(deit_tiny_small, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(vbp.VbpError, match="needs a CUDA device"):
        vbp.calibrate(deit_tiny_small, random_batches(1, 1, (3, 32, 32)), backend="triton", progress=False)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_skipping_non_finite_batches_counts_them(deit_tiny_small, backend):
    batches = random_batches(3, 2, (3, 32, 32))
    batches[1][0, 0, 0, 0] = float("inf")
    stats = vbp.calibrate(deit_tiny_small, batches, nonfinite="skip", backend=backend, progress=False)
    clean = vbp.calibrate(deit_tiny_small, [batches[0], batches[2]], backend=backend, progress=False)
    assert stats.skipped["blocks.0.mlp"] == 1 and stats.sites["blocks.0.mlp"].count == 4 * 5
    torch.testing.assert_close(stats.variance("blocks.5.mlp"), clean.variance("blocks.5.mlp"), rtol=0, atol=0)


def test_resume_ends_with_the_uninterrupted_statistics(deit_tiny_small, tmp_path, monkeypatch):
    batches = random_batches(5, 2, (3, 32, 32))
    whole = vbp.calibrate(deit_tiny_small, batches, progress=False)
    ckpt = tmp_path / "partial.safetensors"

    def interrupted():
        for i, b in enumerate(batches):
            if i == 3:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        vbp.calibrate(deit_tiny_small, interrupted(), checkpoint=ckpt, checkpoint_every=2, progress=False)
    assert vbp.Stats.load(ckpt).batches == 2
    resumed = vbp.calibrate(deit_tiny_small, batches, checkpoint=ckpt, checkpoint_every=2, resume=True, progress=False)
    assert resumed.batches == 5 and resumed.inputs == 10
    for site in whole.sites:
        assert resumed.sites[site].count == whole.sites[site].count
        torch.testing.assert_close(resumed.mean(site), whole.mean(site), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(resumed.variance(site), whole.variance(site), rtol=1e-12, atol=1e-15)
    with pytest.raises(vbp.VbpError, match="nothing to resume"):
        vbp.calibrate(deit_tiny_small, batches, checkpoint=tmp_path / "none.safetensors", resume=True, progress=False)
