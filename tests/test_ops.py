"""Native op fold_bias (vbp._C) against a float64 reference; its PyTorch fallback against the same."""

import os

import pytest
import torch
from conftest import float64_mlp

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
    w2 = (
        torch.randn(hidden, out, generator=g).to(dtype).t()
        if transposed
        else torch.randn(out, hidden, generator=g).to(dtype)
    )
    b2 = torch.randn(out, generator=g).to(dtype)
    mean = torch.randn(hidden, generator=g, dtype=torch.float64)
    pruned = torch.randperm(hidden, generator=g)[:n_pruned]
    return w2, b2, mean, pruned


def test_extension_is_built_when_required():
    if os.environ.get("VBP_REQUIRE_EXTENSION"):
        assert ops.has_extension(), "vbp._C did not build or load"


CASES = [(1, 1, 1), (7, 13, 5), (192, 768, 384), (33, 1382, 0), (5, 9, 9)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize(
    "fold",
    [
        pytest.param(lambda *a: torch.ops.vbp.fold_bias(*a), marks=requires_extension, id="extension"),
        pytest.param(ops.fold_bias_reference, id="reference"),
    ],
)
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
@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda w2, b2, m, p: (w2, b2, m, torch.tensor([1, 1])), "unique"),
        (lambda w2, b2, m, p: (w2, b2, m, torch.tensor([0, 9])), r"in \[0, 9\)"),
        (lambda w2, b2, m, p: (w2, b2[:-1], m, p), "b2 must be"),
        (lambda w2, b2, m, p: (w2.unsqueeze(0), b2, m, p), "2-D"),
        (lambda w2, b2, m, p: (w2, b2.double(), m, p), "one dtype"),
        (lambda w2, b2, m, p: (w2, b2, m, p.int()), "int64"),
    ],
)
def test_fold_bias_rejects_bad_input(bad, message):
    args = bad(*inputs(4, 9, 3, torch.float32))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.vbp.fold_bias(*args)


@requires_extension
def test_fold_bias_traces_on_meta_tensors():
    w2, b2, mean, pruned = (t.to("meta") for t in inputs(4, 9, 3, torch.bfloat16))
    out = torch.ops.vbp.fold_bias(w2, b2, mean, pruned)
    assert out.shape == (4,) and out.dtype == torch.bfloat16 and out.is_meta


@requires_extension
def test_slice_and_compact_mlp_trace_on_meta_tensors():
    w1, b1, w2, b2 = (
        torch.empty(*shape, device="meta", dtype=torch.bfloat16) for shape in ((9, 6), (9,), (4, 9), (4,))
    )
    keep = torch.empty(5, device="meta", dtype=torch.long)
    w1k, b1k, w2k = torch.ops.vbp.slice_mlp(w1, b1, w2, keep)
    assert (w1k.shape, b1k.shape, w2k.shape) == ((5, 6), (5,), (4, 5)) and w1k.is_meta
    x = torch.empty(2, 7, 6, device="meta", dtype=torch.bfloat16)
    y = torch.ops.vbp.compact_mlp(x, w1, b1, w2, b2)
    assert y.shape == (2, 7, 4) and y.dtype == torch.bfloat16 and y.is_meta


@pytest.mark.skipif(not torch.cuda.is_available() or not ops.extension_has_cuda(), reason="needs a GPU and CUDA build")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fold_bias_cuda_matches_cpu(dtype):
    args = inputs(768, 3072, 1500, dtype, seed=4)
    cpu = torch.ops.vbp.fold_bias(*args)
    gpu = torch.ops.vbp.fold_bias(*(a.cuda() for a in args))
    torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "impl",
    [
        pytest.param(lambda *a: torch.ops.vbp.slice_mlp(*a), marks=requires_extension, id="extension"),
        pytest.param(ops.slice_mlp_reference, id="reference"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hidden,n_in,n_out,n_keep", [(1, 1, 1, 1), (13, 7, 5, 6), (3072, 768, 768, 1382), (9, 4, 3, 0)]
)
@pytest.mark.parametrize("transposed", [False, True])
def test_slice_mlp_gathers_exactly(impl, dtype, hidden, n_in, n_out, n_keep, transposed):
    g = torch.Generator().manual_seed(hidden)
    w1 = (
        torch.randn(n_in, hidden, generator=g).to(dtype).t()
        if transposed
        else torch.randn(hidden, n_in, generator=g).to(dtype)
    )
    b1, w2 = torch.randn(hidden, generator=g).to(dtype), torch.randn(n_out, hidden, generator=g).to(dtype)
    keep = torch.randperm(hidden, generator=g)[:n_keep].sort().values
    w1k, b1k, w2k = impl(w1, b1, w2, keep)
    rows = keep.tolist()
    assert torch.equal(w1k, torch.stack([w1[r] for r in rows]) if rows else w1[:0])
    assert torch.equal(b1k, b1[keep]) and torch.equal(w2k, w2[:, keep])
    assert w1k.shape == (n_keep, n_in) and w2k.shape == (n_out, n_keep)


@requires_extension
@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda w1, b1, w2, k: (w1, b1, w2, torch.tensor([2, 2])), "unique"),
        (lambda w1, b1, w2, k: (w1, b1, w2, torch.tensor([-1])), r"in \[0, 6\)"),
        (lambda w1, b1, w2, k: (w1, b1, w2[:, :5], k), "hidden neurons"),
        (lambda w1, b1, w2, k: (w1, b1.double(), w2, k), "one dtype"),
        (lambda w1, b1, w2, k: (w1[None], b1, w2, k), "2-D"),
    ],
)
def test_slice_mlp_rejects_bad_input(bad, message):
    args = bad(torch.randn(6, 4), torch.randn(6), torch.randn(3, 6), torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.vbp.slice_mlp(*args)


def without_onednn(fn):
    """fn with torch.backends.mkldnn turned off: compact_mlp's CPU kernel then takes its ATen path."""

    def run(*args):
        saved = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return fn(*args)
        finally:
            torch.backends.mkldnn.enabled = saved

    return run


def profiled_ops(fn, *args) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return {event.name for event in prof.events()}


@requires_extension
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_compact_mlp_cpu_fuses_epilogues_in_onednn_unless_turned_off():
    x, w1, b1, w2, b2 = torch.randn(10, 6), torch.randn(9, 6), torch.randn(9), torch.randn(4, 9), torch.randn(4)
    fused = profiled_ops(torch.ops.vbp.compact_mlp, x, w1, b1, w2, b2)
    assert "mkldnn::_linear_pointwise" in fused and "aten::gelu_" not in fused and "aten::addmm" not in fused
    aten = profiled_ops(without_onednn(torch.ops.vbp.compact_mlp), x, w1, b1, w2, b2)
    assert "mkldnn::_linear_pointwise" not in aten and "aten::gelu_" in aten
    fp16 = profiled_ops(torch.ops.vbp.compact_mlp, *(t.half() for t in (x, w1, b1, w2, b2)))
    assert "mkldnn::_linear_pointwise" not in fp16


@pytest.mark.parametrize(
    "impl",
    [
        pytest.param(lambda *a: torch.ops.vbp.compact_mlp(*a), marks=requires_extension, id="extension"),
        pytest.param(without_onednn(torch.ops.vbp.compact_mlp), marks=requires_extension, id="extension-aten"),
        pytest.param(ops.compact_mlp_reference, id="reference"),
    ],
)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("tokens", [(0,), (1,), (197,), (2, 197)])
@pytest.mark.parametrize("n_in,hidden,n_out", [(768, 1382, 768), (384, 768, 384), (7, 13, 5), (7, 0, 5)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_compact_mlp_matches_float64(impl, dtype, tol, tokens, n_in, hidden, n_out, approximate):
    g = torch.Generator().manual_seed(n_in + hidden)
    x = torch.randn(*tokens, n_in, generator=g).to(dtype)
    w1, b1 = (torch.randn(hidden, n_in, generator=g) / n_in**0.5).to(dtype), torch.randn(hidden, generator=g).to(dtype)
    w2, b2 = (
        (torch.randn(n_out, hidden, generator=g) / hidden**0.5).to(dtype),
        torch.randn(n_out, generator=g).to(dtype),
    )
    got = impl(x, w1, b1, w2, b2, approximate)
    want = float64_mlp(x, w1, b1, w2, b2, approximate)
    assert got.shape == (*tokens, n_out) and got.dtype == dtype
    scale = want.abs().max().item() if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


@requires_extension
def test_compact_mlp_takes_non_contiguous_input_and_rejects_bad_input():
    x = torch.randn(8, 5, 6).transpose(0, 1)  # [5, 8, 6], not contiguous
    w1, b1, w2, b2 = torch.randn(9, 6), torch.randn(9), torch.randn(4, 9), torch.randn(4)
    torch.testing.assert_close(
        torch.ops.vbp.compact_mlp(x, w1, b1, w2, b2).double(), float64_mlp(x, w1, b1, w2, b2), rtol=1e-5, atol=1e-5
    )
    for args, message in [
        ((x, w1[:, :5], b1, w2, b2), "does not take"),
        ((x, w1, b1, w2[:, :8], b2), "hidden"),
        ((x, w1.double(), b1, w2, b2), "dtype"),
        ((x, w1, b1[:3], w2, b2), "b1 must be"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.vbp.compact_mlp(*args)
    with pytest.raises(RuntimeError, match="approximate"):
        torch.ops.vbp.compact_mlp(x, w1, b1, w2, b2, "sigmoid")


@pytest.mark.skipif(not torch.cuda.is_available() or not ops.extension_has_cuda(), reason="needs a GPU and CUDA build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slice_and_compact_mlp_cuda_match_cpu(dtype):
    g = torch.Generator().manual_seed(5)
    w1, b1 = torch.randn(3072, 768, generator=g).to(dtype), torch.randn(3072, generator=g).to(dtype)
    w2, b2 = torch.randn(768, 3072, generator=g).to(dtype), torch.randn(768, generator=g).to(dtype)
    keep = torch.randperm(3072, generator=g)[:1382].sort().values
    cpu = torch.ops.vbp.slice_mlp(w1, b1, w2, keep)
    gpu = torch.ops.vbp.slice_mlp(w1.cuda(), b1.cuda(), w2.cuda(), keep.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    x = torch.randn(256, 197, 768, generator=g).to(dtype)
    got = torch.ops.vbp.compact_mlp(x.cuda(), *(t.cuda() for t in (cpu[0], cpu[1], cpu[2], b2)))
    want = float64_mlp(x, cpu[0], cpu[1], cpu[2], b2)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_measured_choice_picks_the_faster_implementation_per_key_and_keeps_it():
    import time

    from vbp.kernel_choice import MeasuredChoice

    calls = []

    def slow(x):
        calls.append("slow")
        time.sleep(0.002)
        return x

    def quick(x):
        calls.append("quick")
        return x

    choice = MeasuredChoice(slow, quick)
    assert choice("shape-a", 1) == 1 and (calls.count("slow"), calls.count("quick")) == (3, 4)  # 3 timed each, then the faster runs
    calls.clear()
    choice("shape-a", 2)
    assert calls == ["quick"]  # decided once per key
    assert MeasuredChoice(quick, slow)("k", 3) == 3 and calls[-1] == "quick"
