"""compact_mlp against eager Linear-GELU-Linear and torch.compile of it, at pruned and full DeiT widths.

    .venv/bin/python -m pytest benchmarks/bench_compact_mlp.py --benchmark-only
CPU: 197 and 8*197 tokens (fp32, bf16). CUDA (when present): up to 256*197 tokens, and torch.compile in
"max-autotune" mode. Issue 4's targets: H100 >= 1.3x eager at odd widths, >= parity with torch.compile;
CPU faster than eager at every size.
"""

import pytest
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WIDTHS = [(768, 1382), (384, 768), (768, 3072), (384, 1536)]  # DeiT-B/S at 55%/50% pruned, and full
TOKENS = [197, 256 * 197] if DEVICE == "cuda" else [197, 8 * 197]
DTYPES = [torch.bfloat16, torch.float32]


def eager(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


_compiled = torch.compile(eager, mode="max-autotune" if DEVICE == "cuda" else "default", dynamic=False)


@pytest.mark.parametrize("impl", ["compact_mlp", "eager", "compile"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dim,hidden", WIDTHS)
def test_mlp_forward(benchmark, impl, dtype, tokens, dim, hidden):
    import vbp.ops

    if impl == "compact_mlp" and not vbp.ops.has_extension():
        pytest.skip("vbp._C not built")
    g = torch.Generator().manual_seed(0)
    args = [
        torch.randn(tokens, dim, generator=g),
        torch.randn(hidden, dim, generator=g) / dim**0.5,
        torch.randn(hidden, generator=g),
        torch.randn(dim, hidden, generator=g) / hidden**0.5,
        torch.randn(dim, generator=g),
    ]
    args = [a.to(DEVICE, dtype) for a in args]
    fn = {"compact_mlp": lambda *a: torch.ops.vbp.compact_mlp(*a, "none"), "eager": eager, "compile": _compiled}[impl]
    benchmark.group = f"{dim}->{hidden}->{dim} {str(dtype)[6:]} {tokens} tokens"

    def run():
        with torch.inference_mode():
            fn(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    run()
    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
