"""A linear layer with its epilogue fused: activation(x @ w^T + b) in one kernel.

The bias and the activation are applied to the fp32 accumulator in registers, before the one store of the
output, so fc1 of an MLP writes its hidden tensor once and nothing reads it back for the GELU. Programs
walk [BLOCK_M, BLOCK_N] output tiles in groups of GROUP_M row blocks, so a column block of w is reused from
L2 while it is there. fp32 inputs multiply in IEEE fp32 unless torch allows TF32 matmuls
(torch.backends.cuda.matmul.allow_tf32), as torch's own GEMMs do.
"""

import torch
import triton
import triton.language as tl

from .activation import ACTIVATIONS, activate


@triton.jit
def _linear_activation_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    K,
    sx_m,
    sx_k,
    sw_n,
    sw_k,
    sy_m,
    sy_n,
    ACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    programs_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * programs_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_mask, col_mask = rows < M, cols < N
    x_tile = x_ptr + rows.to(tl.int64)[:, None] * sx_m + ks[None, :] * sx_k  # [BLOCK_M, BLOCK_K] of x
    w_tile = w_ptr + cols.to(tl.int64)[None, :] * sw_n + ks[:, None] * sw_k  # [BLOCK_K, BLOCK_N] of w^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_mask = ks < K - k
        a = tl.load(x_tile, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_tile, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_tile += BLOCK_K * sx_k
        w_tile += BLOCK_K * sw_k

    bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = activate(acc + bias[None, :], ACT)
    y_tile = y_ptr + rows.to(tl.int64)[:, None] * sy_m + cols.to(tl.int64)[None, :] * sy_n
    tl.store(y_tile, y.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def linear_activation(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    activation: str = "gelu",
    block_m: int = 128,
    block_n: int = 128,
    block_k: int | None = None,
    group_m: int = 8,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """activation(x @ w^T + b): x [M, K], w [N, K] (nn.Linear's layout), b [N] -> [M, N] in x's dtype.

    One dtype (fp32, bf16 or fp16) and one device for all three; any strides. `activation` is a key of
    ACTIVATIONS. The block sizes (each at least 16) and launch settings are tuning knobs; block_k defaults
    to 64 for 16-bit inputs and 32 for fp32.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got '{activation}'")
    if x.dim() != 2 or w.dim() != 2 or b.dim() != 1:
        raise ValueError(
            f"expected x [M, K], w [N, K], b [N]; got {tuple(x.shape)}, {tuple(w.shape)}, {tuple(b.shape)}"
        )
    if w.shape[1] != x.shape[1] or b.shape[0] != w.shape[0]:
        raise ValueError(f"w {tuple(w.shape)} and b {tuple(b.shape)} do not fit x {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or w.dtype != x.dtype or b.dtype != x.dtype:
        raise TypeError(f"x, w and b must share one of fp32/bf16/fp16, got {x.dtype}, {w.dtype}, {b.dtype}")
    if w.device != x.device or b.device != x.device:
        raise ValueError(f"x, w and b must be on one device, got {x.device}, {w.device}, {b.device}")
    if min(block_m, block_n, block_k or 16) < 16:
        raise ValueError("block sizes must be at least 16 (the smallest tensor-core tile)")
    (m, k), n = x.shape, w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if block_k is None:
        block_k = 32 if x.dtype == torch.float32 else 64
    tf32 = x.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _linear_activation_kernel[grid](
        x,
        w,
        b,
        y,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        y.stride(0),
        y.stride(1),
        ACT=ACTIVATIONS[activation],
        INPUT_PRECISION="tf32" if tf32 else "ieee",
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return y
