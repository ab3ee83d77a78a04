"""Fused activation + per-channel statistics: one pass over a hidden tensor gives GELU(x) (optionally
written out) and every channel's count, mean and M2.

Each program walks a slab of rows in [BLOCK_N, BLOCK_C] tiles: per tile an fp32 two-pass (tile mean,
then the sum of squared deviations from it), tiles merged by Chan's formula in fp32 registers. All of a
program's arithmetic is on values shifted by the slab's first activated row, so data with a large mean
and a tiny spread (mean 1e4, std 1e-2) keeps its precision in fp32. The host merges the programs'
partials in float64 (Chan's formula over all partials at once); nothing is ever computed as
E[x^2] - E[x]^2.
"""

import math

import torch
import triton
import triton.language as tl

from .activation import ACTIVATIONS, activate


@triton.jit
def _activation_moments_kernel(
    x_ptr,
    y_ptr,
    shift_ptr,
    mean_ptr,
    m2_ptr,
    n_rows,
    n_cols,
    inner,
    rows_per_program,
    sx_outer,
    sx_inner,
    sx_c,
    sy_outer,
    sy_inner,
    sy_c,
    ACT: tl.constexpr,
    WRITE_Y: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Row r of the [n_rows, n_cols] view sits at (r // inner) * s_outer + (r % inner) * s_inner.
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    row_start = pid_n * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    first = row_start.to(tl.int64)
    first_off = (first // inner) * sx_outer + (first % inner) * sx_inner + cols.to(tl.int64) * sx_c
    shift = activate(tl.load(x_ptr + first_off, mask=col_mask, other=0.0).to(tl.float32), ACT)
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_N):
        rows = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        outer, within = rows // inner, rows % inner
        x_off = (outer * sx_outer + within * sx_inner)[:, None] + cols[None, :].to(tl.int64) * sx_c
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
        h = activate(x, ACT)
        if WRITE_Y:
            y_off = (outer * sy_outer + within * sy_inner)[:, None] + cols[None, :].to(tl.int64) * sy_c
            tl.store(y_ptr + y_off, h.to(y_ptr.dtype.element_ty), mask=mask)
        h = tl.where(mask, h - shift[None, :], 0.0)
        n_tile = tl.sum(row_mask.to(tl.float32), axis=0)
        tile_mean = tl.sum(h, axis=0) / n_tile
        dev = tl.where(mask, h - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        total = count + n_tile
        delta = tile_mean - mean
        mean += delta * (n_tile / total)
        m2 += tile_m2 + delta * delta * (count * n_tile / total)
        count = total
    out = pid_n * n_cols + cols
    tl.store(shift_ptr + out, shift, mask=col_mask)
    tl.store(mean_ptr + out, mean, mask=col_mask)
    tl.store(m2_ptr + out, m2, mask=col_mask)


def _as_rows(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """A 3-D view [outer, inner, C] of x with the channel dimension last (a copy only if no view exists)."""
    x = x.movedim(channel_dim, -1)
    if x.dim() == 1:
        return x.reshape(1, 1, -1)
    lead = x.shape[:-1]
    try:
        # keep the first leading dim apart and merge the rest: NCHW -> [N, H*W, C] stays a view
        return x.view(lead[0], math.prod(lead[1:]), x.shape[-1])
    except RuntimeError:
        return x.reshape(lead[0], math.prod(lead[1:]), x.shape[-1])


# fp32 counts inside a program stay exact far below 2^24.
_MAX_ROWS_PER_PROGRAM = 1 << 20


def _rows_per_program(n_rows: int, col_blocks: int, block_n: int, device: torch.device) -> int:
    # Enough programs to keep every SM busy a few times over; the rest of the rows loop inside a program.
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    row_programs = max(1, (8 * sms) // col_blocks)
    rows = min(-(-n_rows // row_programs), _MAX_ROWS_PER_PROGRAM)
    return max(block_n, -(-rows // block_n) * block_n)


def activation_moments(
    x: torch.Tensor,
    activation: str = "gelu",
    channel_dim: int = -1,
    write_output: bool = False,
    block_n: int = 32,
    block_c: int = 128,
) -> tuple[torch.Tensor | None, int, torch.Tensor, torch.Tensor]:
    """Apply `activation` to x and reduce every channel in one pass.

    x: floating tensor (fp32, bf16 or fp16; any strides) whose `channel_dim` indexes channels; every other
    position is one sample. Returns (y, count, mean, m2): y = activation(x) with x's shape and dtype when
    `write_output` (else None; stored channels-last), count = samples per channel, mean and m2 float64 [C].
    """
    if not x.is_floating_point():
        raise TypeError(f"activation_moments needs a floating tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"activation_moments needs a non-empty tensor, got shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got '{activation}'")
    xv = _as_rows(x, channel_dim)
    yv = torch.empty(xv.shape, dtype=x.dtype, device=x.device) if write_output else xv
    outer, inner, n_cols = xv.shape
    n_rows = outer * inner
    col_blocks = triton.cdiv(n_cols, block_c)
    rows_per_program = _rows_per_program(n_rows, col_blocks, block_n, x.device)
    row_programs = triton.cdiv(n_rows, rows_per_program)
    shift_p = torch.empty(row_programs, n_cols, dtype=torch.float32, device=x.device)
    mean_p, m2_p = torch.empty_like(shift_p), torch.empty_like(shift_p)
    _activation_moments_kernel[(row_programs, col_blocks)](
        xv,
        yv,
        shift_p,
        mean_p,
        m2_p,
        n_rows,
        n_cols,
        inner,
        rows_per_program,
        xv.stride(0),
        xv.stride(1),
        xv.stride(2),
        yv.stride(0),
        yv.stride(1),
        yv.stride(2),
        ACT=ACTIVATIONS[activation],
        WRITE_Y=write_output,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
    )
    counts = torch.full((row_programs, 1), float(rows_per_program), dtype=torch.float64, device=x.device)
    counts[-1] = n_rows - rows_per_program * (row_programs - 1)
    # Chan's formula over all partials at once, in float64; each partial mean is its shift plus a small offset.
    means = shift_p.double() + mean_p.double()
    mean = (counts * means).sum(0) / n_rows
    m2 = m2_p.double().sum(0) + (counts * (means - mean).square()).sum(0)
    y = yv.view(x.movedim(channel_dim, -1).shape).movedim(-1, channel_dim) if write_output else None
    return y, n_rows, mean, m2
