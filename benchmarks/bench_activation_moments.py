"""GPU: the fused GELU + Welford kernel against a device-to-device copy, eager GELU + var_mean and
torch.compile of it, and calibration throughput of DeiT-B at batch 256 in bf16 (plain forward vs backends).

    .venv/bin/python -m pytest benchmarks/bench_activation_moments.py --benchmark-only -s
Targets (issue 3, H100): kernel >= 80% of copy bandwidth and >= 3x eager; calibration >= 90% of inference.
Skipped without CUDA.
"""

import pytest
import timm
import torch
import torch.nn.functional as F

import vbp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = (50432, 3072)  # DeiT-B hidden activations at batch 256: 256 * 197 tokens x 3072 neurons


def _gbps(nbytes: int, ms: float) -> float:
    return nbytes / ms / 1e6


def test_stats_kernel_against_copy_and_eager(benchmark):
    from triton.testing import do_bench

    from vbp_kernels import activation_moments

    x = torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(x)

    def eager():
        return torch.var_mean(F.gelu(x.float()), dim=0, correction=0)

    compiled = torch.compile(eager)
    compiled()
    t_copy = do_bench(lambda: dst.copy_(x))
    t_kernel = do_bench(lambda: activation_moments(x, "gelu"))
    t_fused_out = do_bench(lambda: activation_moments(x, "gelu", write_output=True))
    t_eager, t_compiled = do_bench(eager), do_bench(compiled)
    nbytes = x.numel() * x.element_size()
    info = {
        "copy_GBps": _gbps(2 * nbytes, t_copy),
        "kernel_GBps": _gbps(nbytes, t_kernel),
        "kernel_vs_copy": (_gbps(nbytes, t_kernel)) / _gbps(2 * nbytes, t_copy),
        "kernel_with_output_GBps": _gbps(2 * nbytes, t_fused_out),
        "speedup_vs_eager": t_eager / t_kernel,
        "speedup_vs_compile": t_compiled / t_kernel,
        "ms": {
            "copy": t_copy,
            "kernel": t_kernel,
            "kernel_with_output": t_fused_out,
            "eager": t_eager,
            "compiled": t_compiled,
        },
    }
    benchmark.extra_info.update(info)
    print(info)
    benchmark.pedantic(lambda: activation_moments(x, "gelu"), rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("mode", ["inference", "triton", "torch", "triton+covariance"])
def test_calibration_throughput_deit_base(benchmark, mode):
    """DeiT-B at batch 256, bf16: plain inference, calibration by each backend, and with every site's 3072 x 3072
    covariance (affine compensation's statistics: one more GEMM per site and batch, 906 MB of float64)."""
    from triton.testing import do_bench

    model = timm.create_model("deit_base_patch16_224").cuda().eval().to(torch.bfloat16)
    images = torch.randn(256, 3, 224, 224, device="cuda", dtype=torch.bfloat16)

    def run():
        if mode == "inference":
            with torch.inference_mode():
                model(images)
        else:
            backend, _, extra = mode.partition("+")
            vbp.calibrate(model, [images], backend=backend, progress=False, covariance=extra == "covariance")

    ms = do_bench(run, warmup=3, rep=200)
    benchmark.extra_info.update({"images_per_s": 256 / ms * 1e3, "ms": ms})
    print(mode, 256 / ms * 1e3, "images/s")
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
