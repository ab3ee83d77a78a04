"""vbp's Triton kernels compile for Hopper (sm_90) without a GPU, use its tensor cores, pipeline their loads and
spill nothing.

Triton's interpreter, which runs the numerical tests on machines without a GPU, does not check what the
compiler checks (it once let a kernel read a plain float global that compiled Triton rejects), so this
compiles every variant with Triton's bundled ptxas, in a process without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("hopper_compile.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_variant_compiles(compiled):
    kinds = [(row["kernel"], row["variant"]) for row in compiled]
    assert len(kinds) == len(set(kinds)) == 3 * 3 + 1 + 3 * 2  # linear: 3 dtypes x 3 activations + fp32 IEEE


def test_no_variant_spills_registers(compiled):
    assert all(row["local_bytes"] == 0 for row in compiled), [row for row in compiled if row["local_bytes"]]


def test_linear_activation_runs_on_tensor_cores_with_pipelined_loads(compiled):
    one_stage = (128 * 64 + 64 * 128) * 2  # bytes of one bf16/fp16 A and B tile pair
    for row in compiled:
        if row["kernel"] != "linear_activation":
            continue
        if row["variant"].endswith("ieee"):  # IEEE fp32 products: CUDA cores, as torch's GEMMs without TF32
            assert not row["wgmma"] and not row["mma_sync"], row
        else:
            assert row["wgmma"], row
            if not row["variant"].startswith("fp32"):
                assert row["shared_bytes"] >= 2 * one_stage, row  # at least double-buffered
