"""What the CUDA kernels of vbp._C compile to, read from the built extension's SASS (no GPU needed)."""

import subprocess

import pytest
from hopper_compile import CUOBJDUMP

from vbp import ops

pytestmark = pytest.mark.skipif(
    not ops.extension_has_cuda() or not CUOBJDUMP.exists(), reason="needs vbp._C built with CUDA, and cuobjdump"
)


def sass_by_kernel() -> dict[str, str]:
    from vbp import _C

    out = subprocess.run([str(CUOBJDUMP), "-sass", _C.__file__], capture_output=True, text=True, check=True).stdout
    kernels, name = {}, None
    for line in out.splitlines():
        if "Function :" in line:
            name = line.split("Function :")[1].strip()
            kernels[name] = ""
        elif name:
            kernels[name] += line + "\n"
    return kernels


def test_slice_mlp_copies_rows_16_bytes_at_a_time_for_hopper():
    kernels = sass_by_kernel()
    rows = [sass for name, sass in kernels.items() if "gather_rows" in name and "float4" in name]
    assert rows, f"no float4 row-gather kernel among {list(kernels)}"
    assert all("LDG.E.128" in sass and "STG.E.128" in sass for sass in rows)
