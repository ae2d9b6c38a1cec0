"""INT8 rows with one float32 scale per row (or per group of rows), for the attend kernel's 8-bit Q.Kᵀ.

A row x becomes round(x / s) with s = max|x| / 127 over the row (GROUP = 1) or over each group of
GROUP consecutive rows (a key block: one scale per block), so that x ~= s * int8. Keys are first
smoothed: each (batch, head)'s mean key is subtracted, which moves every score of a query row by
the same amount (softmax is unchanged) and leaves the int8 grid for what differs between keys.
An all-zero row or group gets scale 0 (its dequantised values are exactly 0). One program reads
each row once: the tensors stay in their own strides, the outputs are contiguous.
"""
import torch
import triton
import triton.language as tl

from .launch import run


@triton.jit(do_not_specialize=["N", "H"])
def _quantize_rows(X, MEAN, XQ, XS, stride_xb, stride_xh, stride_xn, N, H,
                   HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, GROUP: tl.constexpr, SMOOTH: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_n < N
    x = tl.load(X + b * stride_xb + h * stride_xh + offs_n[:, None] * stride_xn + offs_d[None, :],
                mask=ok[:, None], other=0.0).to(tl.float32)
    if SMOOTH:
        x = x - tl.load(MEAN + pid_bh * HEAD_DIM + offs_d)[None, :]
        x = tl.where(ok[:, None], x, 0.0)
    amax = tl.max(tl.abs(x), 1)
    if GROUP > 1:  # one scale per GROUP rows (ROWS is a multiple of GROUP)
        amax = tl.reshape(tl.broadcast_to(tl.max(tl.reshape(amax, [ROWS // GROUP, GROUP]), 1)[:, None],
                                          [ROWS // GROUP, GROUP]), [ROWS])
    scale = amax / 127.0
    inv = tl.where(amax > 0.0, 127.0 / tl.maximum(amax, 1e-30), 0.0)
    y = x * inv[:, None]
    y = tl.minimum(tl.maximum(tl.floor(y + 0.5), -127.0), 127.0)  # |y| <= 127 by construction; clamp is for rounding
    tl.store(XQ + pid_bh * N * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :], y.to(tl.int8),
             mask=ok[:, None])
    tl.store(XS + pid_bh * N + offs_n, scale, mask=ok)


def quantize_int8(x, *, group=1, mean=None, rows=64, num_warps=4):
    """(int8 (B, H, N, D) contiguous, float32 scales (B, H, N)) of x (B, H, N, D), any strides with a
    unit last one; `mean` (B, H, D) float32 is subtracted first (smoothing); `group` rows share a scale."""
    B, H, N, D = x.shape
    rows = max(rows, group)
    xq = torch.empty((B, H, N, D), device=x.device, dtype=torch.int8)
    xs = torch.empty((B, H, N), device=x.device, dtype=torch.float32)
    smooth = mean is not None
    run(_quantize_rows, (triton.cdiv(N, rows), B * H),
        (x, mean if smooth else xs, xq, xs, *x.stride()[:3], N, H),
        dict(HEAD_DIM=D, ROWS=rows, GROUP=group, SMOOTH=smooth), num_warps=num_warps, num_stages=1)
    return xq, xs
