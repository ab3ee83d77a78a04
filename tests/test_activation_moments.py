"""The fused GELU + Welford Triton kernel against float64 references (interpreted on CPU, compiled on CUDA)."""

import pytest
import torch
import torch.nn.functional as F

from vbp_kernels import activation_moments

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6}


def reference(x: torch.Tensor, activation: str, channel_dim: int = -1):
    """float64 two-pass over the activation computed in float32 (the kernel's working precision)."""
    h = x.float()
    if activation != "none":
        h = F.gelu(h, approximate="tanh" if activation == "gelu_tanh" else "none")
    rows = h.movedim(channel_dim, -1).reshape(-1, h.shape[channel_dim]).double()
    mean = rows.mean(0)
    return h, rows.shape[0], mean, ((rows - mean) ** 2).sum(0)


def check(x, activation="gelu", channel_dim=-1, rtol=1e-5, **kwargs):
    y, count, mean, m2 = activation_moments(x, activation, channel_dim, write_output=True, **kwargs)
    h, n, ref_mean, ref_m2 = reference(x, activation, channel_dim)
    assert count == n
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(
        y.float(),
        h.to(x.dtype).float(),
        rtol=1e-2 if x.dtype != torch.float32 else 1e-5,
        atol=1e-2 if x.dtype != torch.float32 else 2e-6,
    )
    scale = ref_m2.abs().max() + 1e-30
    torch.testing.assert_close(mean, ref_mean, rtol=rtol, atol=rtol * (ref_mean.abs().max() + 1e-12))
    torch.testing.assert_close(m2, ref_m2, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (97, 5), (3, 7, 130)])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "none"])
def test_odd_shapes_dtypes_and_activations(dtype, shape, activation):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).to(DEVICE)
    check(x, activation)


def test_non_contiguous_and_channels_first():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 130, generator=g).to(DEVICE).t()  # [130, 40], strides (1, 130)
    check(x)
    nchw = torch.randn(2, 19, 5, 6, generator=g).to(DEVICE)
    check(nchw, channel_dim=1)
    check(nchw[:, :, ::2, 1:], channel_dim=1)  # sliced: no view exists, the kernel reads a copy


def test_large_mean_tiny_std_keeps_precision():
    x = 1e4 + 1e-2 * torch.randn(5000, 33, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x.float().to(DEVICE)
    _, _, mean, m2 = activation_moments(x, "none")
    _, _, ref_mean, ref_m2 = reference(x, "none")
    assert ((m2 - ref_m2).abs() / ref_m2).max() < 1e-6
    assert ((mean - ref_mean).abs()).max() < 1e-6


def test_millions_of_rows_across_many_programs():
    x = torch.randn(2_000_000, 3, generator=torch.Generator().manual_seed(3)).to(DEVICE) * 2 + 1
    _, count, mean, m2 = activation_moments(x, "gelu", block_n=4096, block_c=4)
    _, n, ref_mean, ref_m2 = reference(x, "gelu")
    assert count == n == 2_000_000
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m2, ref_m2, rtol=1e-6, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="floating"):
        activation_moments(torch.ones(3, 4, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="non-empty"):
        activation_moments(torch.ones(0, 4, device=DEVICE))
    with pytest.raises(ValueError, match="activation must be"):
        activation_moments(torch.ones(2, 4, device=DEVICE), "relu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_size_deit_base_activations_on_gpu():
    x = torch.randn(50432, 3072, device="cuda", dtype=torch.bfloat16)  # DeiT-B at batch 256
    check(x, "gelu", rtol=1e-5)
