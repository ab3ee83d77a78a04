"""Native op fold_bias (vbp._C) against a float64 reference; its PyTorch fallback against the same."""

import os

import pytest
import torch

from vbp import ops

requires_extension = pytest.mark.skipif(
    not ops.has_extension() and not os.environ.get("VBP_REQUIRE_EXTENSION"),
    reason="vbp._C is not built (make test builds it and sets VBP_REQUIRE_EXTENSION)",
)


def float64_fold(w2, b2, mean, pruned):
    out = b2.double().clone()
    for j in pruned.tolist():
        out += w2[:, j].double() * mean[j].double()
    return out


def inputs(out, hidden, n_pruned, dtype, seed=0, transposed=False):
    g = torch.Generator().manual_seed(seed)
    w2 = torch.randn(hidden, out, generator=g).to(dtype).t() if transposed else torch.randn(out, hidden, generator=g).to(dtype)
    b2 = torch.randn(out, generator=g).to(dtype)
    mean = torch.randn(hidden, generator=g, dtype=torch.float64)
    pruned = torch.randperm(hidden, generator=g)[:n_pruned]
    return w2, b2, mean, pruned


def test_extension_is_built_when_required():
    if os.environ.get("VBP_REQUIRE_EXTENSION"):
        assert ops.has_extension(), "vbp._C did not build or load"


CASES = [(1, 1, 1), (7, 13, 5), (192, 768, 384), (33, 1382, 0), (5, 9, 9)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("fold", [
    pytest.param(lambda *a: torch.ops.vbp.fold_bias(*a), marks=requires_extension, id="extension"),
    pytest.param(ops.fold_bias_reference, id="reference"),
])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out,hidden,n_pruned", CASES)
@pytest.mark.parametrize("transposed", [False, True])
def test_fold_bias_matches_float64(fold, dtype, out, hidden, n_pruned, transposed):
    w2, b2, mean, pruned = inputs(out, hidden, n_pruned, dtype, transposed=transposed)
    got = fold(w2, b2, mean, pruned)
    want = float64_fold(w2, b2, mean, pruned)
    assert got.dtype == dtype and got.shape == (out,)
    # Accumulated in float64: what is left is the final rounding to dtype, within a few units of its last place.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got.double(), want, rtol=4 * eps, atol=4 * eps * float(want.abs().max()))


@requires_extension
def test_fold_bias_is_bit_identical_across_runs():
    w2, b2, mean, pruned = inputs(64, 3072, 1500, torch.float32, seed=3)
    first = torch.ops.vbp.fold_bias(w2, b2, mean, pruned)
    for _ in range(5):
        assert torch.equal(torch.ops.vbp.fold_bias(w2, b2, mean, pruned), first)


@requires_extension
@pytest.mark.parametrize("bad,message", [
    (lambda w2, b2, m, p: (w2, b2, m, torch.tensor([1, 1])), "unique"),
    (lambda w2, b2, m, p: (w2, b2, m, torch.tensor([0, 9])), r"in \[0, 9\)"),
    (lambda w2, b2, m, p: (w2, b2[:-1], m, p), "b2 must be"),
    (lambda w2, b2, m, p: (w2.unsqueeze(0), b2, m, p), "2-D"),
    (lambda w2, b2, m, p: (w2, b2.double(), m, p), "one dtype"),
    (lambda w2, b2, m, p: (w2, b2, m, p.int()), "int64"),
])
def test_fold_bias_rejects_bad_input(bad, message):
    args = bad(*inputs(4, 9, 3, torch.float32))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.vbp.fold_bias(*args)


@requires_extension
def test_fold_bias_traces_on_meta_tensors():
    w2, b2, mean, pruned = (t.to("meta") for t in inputs(4, 9, 3, torch.bfloat16))
    out = torch.ops.vbp.fold_bias(w2, b2, mean, pruned)
    assert out.shape == (4,) and out.dtype == torch.bfloat16 and out.is_meta


@pytest.mark.skipif(not torch.cuda.is_available() or not ops.extension_has_cuda(), reason="needs a GPU and CUDA build")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fold_bias_cuda_matches_cpu(dtype):
    args = inputs(768, 3072, 1500, dtype, seed=4)
    cpu = torch.ops.vbp.fold_bias(*args)
    gpu = torch.ops.vbp.fold_bias(*(a.cuda() for a in args))
    torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=0, atol=0)
