"""The fused linear + bias + activation Triton kernel against float64 (interpreted on CPU, compiled on CUDA)."""

import pytest
import torch
import torch.nn.functional as F

from vbp_kernels import linear_activation

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_BLOCKS = {"block_m": 16, "block_n": 16, "block_k": 16, "num_warps": 4}


def float64_linear_activation(x, w, b, activation):
    h = x.double() @ w.double().t() + b.double()
    return h if activation == "none" else F.gelu(h, approximate="tanh" if activation == "gelu_tanh" else "none")


def inputs(m, k, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    b = torch.randn(n, generator=g)
    return [t.to(DEVICE, dtype) for t in (x, w, b)]


def check(x, w, b, activation, **blocks):
    y = linear_activation(x, w, b, activation, **blocks)
    want = float64_linear_activation(x, w, b, activation)
    assert y.shape == want.shape and y.dtype == x.dtype
    # fp32: IEEE products with fp32 accumulation; 16-bit: one rounding of the output, products exact in fp32
    tol = 1e-5 if x.dtype == torch.float32 else 1e-2
    scale = want.abs().max().item() if want.numel() else 1.0
    torch.testing.assert_close(y.double().cpu(), want.cpu(), rtol=tol, atol=tol * scale)


# Triton 3.8's interpreter multiplies bf16 tiles as their raw uint16 bits (interpreter.py, create_dot), so bf16
# runs only compiled, on CUDA; fp16 takes the same 16-bit path of the kernel on the CPU.
BF16 = pytest.param(
    torch.bfloat16, marks=pytest.mark.skipif(DEVICE == "cpu", reason="tl.dot on bf16 is wrong in Triton's interpreter")
)


@pytest.mark.parametrize("dtype", [torch.float32, BF16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "none"])
@pytest.mark.parametrize("m,k,n", [(1, 7, 5), (33, 40, 19), (70, 64, 130), (17, 16, 16)])
def test_matches_float64(dtype, activation, m, k, n):
    check(*inputs(m, k, n, dtype, seed=m + k + n), activation, **SMALL_BLOCKS)


def test_default_blocks_and_grouped_order_cover_every_tile():
    # more row blocks than one group (GROUP_M = 2 here) and a ragged last group and column block
    x, w, b = inputs(5 * 16 + 3, 48, 3 * 16 + 1, torch.float32, seed=1)
    check(x, w, b, "gelu", group_m=2, **SMALL_BLOCKS)
    check(x, w, b, "gelu")  # 128 x 128 x 32 tiles, larger than the problem


def test_any_strides_and_empty_shapes():
    x, w, b = inputs(40, 24, 20, torch.float32, seed=2)
    check(x.t().contiguous().t(), w.t().contiguous().t(), b, "gelu", **SMALL_BLOCKS)  # column-major x and w
    check(x[::2], w[:, ::1], b, "gelu", **SMALL_BLOCKS)  # every other row of x
    assert linear_activation(x[:0], w, b).shape == (0, 20)
    assert linear_activation(x, w[:0], b[:0]).shape == (40, 0)


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (lambda x, w, b: (x, w[:, :5], b), ValueError, "do not fit"),
        (lambda x, w, b: (x, w, b[:3]), ValueError, "do not fit"),
        (lambda x, w, b: (x[None], w, b), ValueError, "expected x"),
        (lambda x, w, b: (x, w.double(), b), TypeError, "share one of"),
        (lambda x, w, b: (x.long(), w.long(), b.long()), TypeError, "share one of"),
    ],
)
def test_rejects_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        linear_activation(*bad(*inputs(8, 6, 4, torch.float32)))
    with pytest.raises(ValueError, match="activation must be"):
        linear_activation(*inputs(8, 6, 4, torch.float32), "relu")


@pytest.mark.skipif(DEVICE == "cpu", reason="needs a CUDA GPU (the production tiles are too slow to interpret)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_deit_base_pruned_fc1_on_gpu(dtype):
    check(*inputs(4096, 768, 1382, dtype, seed=7), "gelu")
