"""compact_mlp against eager Linear-GELU-Linear and torch.compile of it, at pruned and full DeiT widths.

    .venv/bin/python -m pytest benchmarks/bench_compact_mlp.py --benchmark-only -s
CPU: 197, 8*197 and 64*197 tokens (fp32, bf16). CUDA (when present): up to 256*197 tokens, torch.compile in
"max-autotune" mode, and `vbp.ops.compact_mlp_triton` (fc1 + bias + GELU as one Triton kernel) besides.
Issue 4's targets: H100 >= 1.3x eager at odd widths, >= parity with torch.compile; CPU faster than eager at
every size. On CUDA, max-autotune compiles each of the 20 shapes for a while: run a width at a time
(`-k 1382`) to stay inside a device command's time limit.

Each test prints one row: the median time of each implementation and compact_mlp's speed-up over the others
(also in the JSON's extra_info); pytest-benchmark's own figure is compact_mlp's. On the CPU they are
timed in turn, one call each per round, so that a shared machine whose speed drifts slows all of them alike;
on CUDA each is timed by triton.testing.do_bench.
"""

import pytest
import torch
import torch.nn.functional as F

from vbp.timing import interleaved_medians

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# DeiT-B/S at 55%/50% pruned, DeiT-B's 1382 padded to a multiple of 8 (zero neurons), and the full widths.
WIDTHS = [(768, 1382), (768, 1384), (384, 768), (768, 3072), (384, 1536)]
TOKENS = [197, 256 * 197] if DEVICE == "cuda" else [197, 8 * 197, 64 * 197]
DTYPES = [torch.bfloat16, torch.float32]


def eager(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


# One compiled graph per shape measured: above dynamo's default limit of 8 recompilations, torch.compile would
# silently run the rest eagerly.
torch._dynamo.config.recompile_limit = 4 * len(WIDTHS) * len(TOKENS) * len(DTYPES)
_compiled = torch.compile(eager, mode="max-autotune" if DEVICE == "cuda" else "default", dynamic=False)


def medians_ms(fns: dict, rounds: int) -> dict[str, float]:
    if DEVICE == "cuda":
        from triton.testing import do_bench

        return {name: do_bench(fn, return_mode="median") for name, fn in fns.items()}
    return {name: 1e3 * t for name, t in interleaved_medians(fns, rounds).items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dim,hidden", WIDTHS)
def test_mlp_forward(benchmark, dtype, tokens, dim, hidden):
    import vbp.ops

    if not vbp.ops.has_extension():
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
    impls = {"compact_mlp": lambda *a: torch.ops.vbp.compact_mlp(*a, "none"), "eager": eager, "compile": _compiled}
    if DEVICE == "cuda":
        impls["triton"] = lambda *a: vbp.ops.compact_mlp_triton(*a, "none")

    def runner(fn):
        def run():
            with torch.inference_mode():
                fn(*args)
            if DEVICE == "cuda":
                torch.cuda.synchronize()

        return run

    rounds = 20 if tokens < 64 * 197 or DEVICE == "cuda" else 6
    ms = medians_ms({name: runner(fn) for name, fn in impls.items()}, rounds)
    speedups = {f"vs_{name}": ms[name] / ms["compact_mlp"] for name in ("eager", "compile")}
    benchmark.extra_info.update({"ms": ms, **speedups})
    benchmark.group = f"{dim}->{hidden}->{dim} {str(dtype)[6:]} {tokens} tokens"
    # one Markdown row: the shape, each implementation's median ms, then compact_mlp's speed-ups
    print(
        f"\n| {dim}->{hidden}->{dim} | {str(dtype)[6:]} | {tokens} | "
        + " | ".join(f"{name} {ms[name]:.3g}" for name in impls)
        + f" | {speedups['vs_eager']:.2f}x | {speedups['vs_compile']:.2f}x |"
    )
    benchmark.pedantic(runner(impls["compact_mlp"]), rounds=3, warmup_rounds=1)
