"""Compiles vbp's Triton kernels for Hopper (sm_90) with Triton's bundled ptxas; no GPU needed.

Run as a script (`python tests/hopper_compile.py`), in a process without TRITON_INTERPRET: under the
interpreter @triton.jit gives functions that cannot be compiled. Prints one JSON line per compiled variant:
{"kernel", "variant", "wgmma", "mma_sync", "shared_bytes", "registers", "local_bytes"}; a kernel that does not compile raises.
"""

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vbp_kernels.activation_moments import _activation_moments_kernel
from vbp_kernels.linear_activation import _linear_activation_kernel

HOPPER = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"  # Triton bundles it


def compile_for_hopper(
    kernel, pointers: dict[str, str], constants: dict, unit: tuple, divisible: tuple, num_warps: int, num_stages: int
):
    """The compiled kernel, specialised as a launch on contiguous tensors is: the `unit` arguments (strides of 1)
    become the constant 1 and the `divisible` ones (pointers, sizes) are known multiples of 16, which is what lets
    Triton vectorise loads and pipeline them. Every argument not in `pointers` or `constants` is an i32 scalar."""
    constants = {**constants, **{name: 1 for name in unit}}
    signature = {}
    for name in kernel.arg_names:
        signature[name] = pointers.get(name) or ("constexpr" if name in constants else "i32")
    constexprs = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers and local-memory bytes (spills) per thread, from cuobjdump -res-usage (Triton bundles it)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|LOCAL):(\d+)", out))
    return {"registers": int(usage["REG"]), "local_bytes": int(usage["LOCAL"])}


def report(kernel_name: str, variant: str, compiled) -> None:
    ptx = compiled.asm["ptx"]
    row = {
        "kernel": kernel_name,
        "variant": variant,
        "wgmma": "wgmma.mma_async" in ptx,
        "mma_sync": "mma.sync" in ptx,
        "shared_bytes": compiled.metadata.shared,
        **resource_usage(compiled.asm["cubin"]),
    }
    print(json.dumps(row))


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    for dtype in ("bf16", "fp16", "fp32"):
        variants = [(act, "tf32") for act in (0, 1, 2)] + ([(1, "ieee")] if dtype == "fp32" else [])
        for act, precision in variants:
            block_k = 32 if dtype == "fp32" else 64
            pointers = {name: f"*{dtype}" for name in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")}
            constants = dict(ACT=act, INPUT_PRECISION=precision, BLOCK_M=128, BLOCK_N=128, BLOCK_K=block_k, GROUP_M=8)
            # DeiT-B's pruned fc1: K = 768 and row strides of 768 divide by 16, N = 1382 does not
            unit, divisible = ("sx_k", "sw_k", "sy_n"), (*pointers, "K", "sx_m", "sw_n")
            compiled = compile_for_hopper(
                _linear_activation_kernel, pointers, constants, unit, divisible, num_warps=8, num_stages=3
            )
            report("linear_activation", f"{dtype} act={act} {precision}", compiled)
        for write_y in (False, True):
            pointers = {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"}
            pointers.update({name: "*fp32" for name in ("shift_ptr", "mean_ptr", "m2_ptr")})
            constants = dict(ACT=1, WRITE_Y=write_y, BLOCK_N=32, BLOCK_C=128)
            unit = ("sx_c", "sy_c")
            divisible = (*pointers, "n_cols", "sx_outer", "sx_inner", "sy_outer", "sy_inner")
            compiled = compile_for_hopper(
                _activation_moments_kernel, pointers, constants, unit, divisible, num_warps=4, num_stages=2
            )
            report("activation_moments", f"{dtype} write_y={write_y}", compiled)


if __name__ == "__main__":
    main()
