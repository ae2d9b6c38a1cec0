"""Block logits for selection from each query block's mean query against every key.

PBS's own estimate is mean query . mean key per block pair; this one ("lse") keeps the keys
whole: logit(i, j) = logsumexp over the keys of key block j of (mean query of block i) . k *
scale, so the softmax over key blocks that selection takes is the exact attention mass the mean
query puts on each block. On the H200 at 32k it reaches the default's error at 1.6x lower
density than mean pooling on the mixed workload (benchmarks/results/h200_oracle_32k.json).
One program per (tile of pooled query rows, key block, batch x KV head): no loop, no
normaliser across blocks, and the rows of a GQA group share their KV head's keys.
"""
import torch
import triton
import triton.language as tl

from .launch import run


# The output's strides follow the prompt's block count: specialised, a length whose count is not a
# multiple of 16 (or is 1) would be another kernel, missing from the library built at the tuned lengths.
@triton.jit(do_not_specialize=["R", "N", "HKV", "stride_ob", "stride_oh", "stride_or"])
def _block_lse(PQ, K, OUT, scale,
               stride_pb, stride_ph, stride_pr, stride_kb, stride_kh, stride_kn, stride_ob, stride_oh, stride_or,
               R, N, HKV, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid_q = tl.program_id(0)
    kb = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    h = (pid_bh % HKV).to(tl.int64)
    rows = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, HEAD_DIM)
    keys = kb * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    k = tl.load(K + b * stride_kb + h * stride_kh + keys.to(tl.int64)[:, None] * stride_kn + offs_d[None, :],
                mask=(keys < N)[:, None], other=0.0)
    q = tl.load(PQ + b * stride_pb + h * stride_ph + rows.to(tl.int64)[:, None] * stride_pr + offs_d[None, :],
                mask=(rows < R)[:, None], other=0.0)
    s = tl.dot(q.to(k.dtype), tl.trans(k)) * scale
    s = tl.where((keys < N)[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    lse = m + tl.log(tl.sum(tl.exp(s - m[:, None]), 1))
    tl.store(OUT + b * stride_ob + h * stride_oh + rows.to(tl.int64) * stride_or + kb, lse, mask=rows < R)


def block_lse(pooled_q, k, *, block_size, scale, block_q=64, num_warps=4):
    """(B, Hkv, R, NB) float32 logits: pooled query rows (B, Hkv, R, D) against each key block of
    k (B, Hkv, N, D), as the logsumexp of their scaled dot products over the block's keys."""
    B, Hkv, R, D = pooled_q.shape
    N = k.shape[2]
    nb = triton.cdiv(N, block_size)
    out = torch.empty((B, Hkv, R, nb), device=k.device, dtype=torch.float32)
    grid = (triton.cdiv(R, block_q), nb, B * Hkv)
    run(_block_lse, grid, (pooled_q, k, out, scale, *pooled_q.stride()[:3], *k.stride()[:3], *out.stride()[:3],
                           R, N, Hkv),
        dict(HEAD_DIM=D, BLOCK_Q=block_q, BLOCK_SIZE=block_size), num_warps=num_warps, num_stages=1)
    return out
