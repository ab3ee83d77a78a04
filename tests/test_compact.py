"""CompactMlp and vbp.compact: the same outputs and state_dict as the timm Mlp they replace."""

import copy

import pytest
import torch
from conftest import assert_close_to_scale, float64_mlp, random_batches, small_model
from timm.layers import Mlp

import vbp

device = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernel runs interpreted on the CPU


def test_compact_mlp_equals_timm_mlp_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    mlp = Mlp(24, 37, act_layer=torch.nn.GELU).eval()
    cm = vbp.CompactMlp.from_site(vbp.find_sites(torch.nn.Sequential(copy.deepcopy(mlp)))[0])
    assert cm.state_dict().keys() == mlp.state_dict().keys()
    x = torch.randn(3, 11, 24)
    with torch.no_grad():
        assert_close_to_scale(cm(x), mlp(x))
    x.requires_grad_(True)
    cm(x).sum().backward()  # with gradients it runs the eager path, so it trains too
    assert x.grad is not None and cm.fc1.weight.grad is not None
    rebuilt = vbp.CompactMlp.from_weights(mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    rebuilt.load_state_dict(mlp.state_dict())


def test_compact_swaps_the_sites_of_a_pruned_model(deit_tiny_small):
    stats = vbp.calibrate(deit_tiny_small, random_batches(1, 2, (3, 32, 32)), progress=False)
    pruned = vbp.prune(copy.deepcopy(deit_tiny_small), vbp.select(stats, 0.5), stats)
    compacted = vbp.compact(copy.deepcopy(pruned))
    assert all(isinstance(b.mlp, vbp.CompactMlp) for b in compacted.blocks)
    assert compacted.state_dict().keys() == pruned.state_dict().keys()
    x = random_batches(1, 3, (3, 32, 32), seed=4)[0]
    with torch.inference_mode():
        assert_close_to_scale(compacted(x), pruned(x))
        traced = torch.compile(compacted, backend="aot_eager", fullgraph=True)
        assert_close_to_scale(traced(x), pruned(x))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_triton_kernel_matches_float64(dtype, tol, approximate):
    # fc1 + bias + GELU in one Triton kernel (interpreted on the CPU), fc2 a biased GEMM
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 29, 24, generator=g)
    w1, b1 = torch.randn(37, 24, generator=g) / 24**0.5, torch.randn(37, generator=g)
    w2, b2 = torch.randn(24, 37, generator=g) / 37**0.5, torch.randn(24, generator=g)
    args = [t.to(device, dtype) for t in (x, w1, b1, w2, b2)]
    got = vbp.ops.compact_mlp_triton(*args, approximate)
    want = float64_mlp(*args, approximate)
    assert got.shape == (2, 29, 24) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_compact_with_the_triton_kernel_equals_the_native_one(deit_tiny_small):
    x = random_batches(1, 2, (3, 32, 32), seed=5)[0].to(device)
    native = vbp.compact(copy.deepcopy(deit_tiny_small).to(device))
    triton_run = vbp.compact(copy.deepcopy(deit_tiny_small).to(device), kernel="triton")
    assert all(b.mlp.kernel == "triton" for b in triton_run.blocks)
    with torch.inference_mode():
        assert_close_to_scale(triton_run(x), native(x))
    with pytest.raises(vbp.VbpError, match="kernel must be one of"):
        vbp.compact(deit_tiny_small, kernel="cutlass")


def test_triton_kernel_refuses_cpu_tensors_when_not_interpreted(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w1, b1, w2, b2 = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5), torch.randn(4, 5), torch.randn(4)
    with pytest.raises(vbp.VbpError, match="runs on CUDA tensors"):
        vbp.ops.compact_mlp_triton(x, w1, b1, w2, b2)


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("convnext_tiny", {"depths": (1, 1, 1, 1)}, 64),  # Linear MLPs on channels-last [B, H, W, C] maps
        ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1), "img_size": 112}, 112),
    ],
)
def test_compact_convnext_and_swin(name, kwargs, size):
    model = small_model(name, **kwargs)
    compacted = vbp.compact(copy.deepcopy(model))
    assert sum(isinstance(m, vbp.CompactMlp) for m in compacted.modules()) == len(vbp.find_sites(model))
    x = random_batches(1, 2, (3, size, size), seed=6)[0]
    with torch.inference_mode():
        assert_close_to_scale(compacted(x), model(x))


def test_conv_sites_are_left_alone():
    model = small_model("convnext_atto", conv_mlp=True)
    vbp.compact(model)
    assert not any(isinstance(m, vbp.CompactMlp) for m in model.modules())


def test_from_site_refuses_other_activations():
    site = vbp.find_sites(torch.nn.Sequential(Mlp(8, 16, act_layer=torch.nn.ReLU)))[0]
    with pytest.raises(vbp.VbpError, match="activation is not a GELU"):
        vbp.CompactMlp.from_site(site)
