"""Calibration cost beside plain inference (CPU, PyTorch statistics backend): DeiT-S, batch 16 at 224.

.venv/bin/python -m pytest benchmarks/bench_calibrate.py --benchmark-only
"""

import pytest
import timm
import torch

import vbp


@pytest.fixture(scope="module")
def deit_small():
    torch.manual_seed(0)
    return timm.create_model("deit_small_patch16_224").eval(), [torch.randn(16, 3, 224, 224)]


def test_plain_inference(benchmark, deit_small):
    model, batches = deit_small

    def forward():
        with torch.inference_mode():
            model(batches[0])

    benchmark.pedantic(forward, rounds=5, warmup_rounds=1)


def test_calibrate_torch_backend(benchmark, deit_small):
    model, batches = deit_small
    benchmark.pedantic(lambda: vbp.calibrate(model, batches, progress=False), rounds=5, warmup_rounds=1)


def test_calibrate_with_covariance(benchmark, deit_small):
    """The same calibration also gathering every site's 1536 x 1536 covariance (one GEMM per site and batch)."""
    model, batches = deit_small
    benchmark.pedantic(
        lambda: vbp.calibrate(model, batches, progress=False, covariance=True), rounds=5, warmup_rounds=1
    )
