"""PBS's key permutation in one kernel: per (batch, KV head, segment), sort the segment's keys by
descending score and gather K and V rows into the permuted order, with each slot's original
position. Replaces a torch argsort, index arithmetic and two gathers (seven launches) by one.

Sort keys pack the score's float32 bits (non-negative, so they order as integers) above the slot's
reversed index: a descending sort then breaks ties by ascending position, exactly as a stable
descending argsort does. A tail segment shorter than SEGMENT (and any key past N) scores 0, so it
keeps its order: the tail stays in place.
"""
import torch
import triton
import triton.language as tl

from .launch import run


@triton.jit(do_not_specialize=["N", "HKV"])
def _segment_permute(SCORES, K, V, KP, VP, POS,
                     stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                     N, HKV,
                     SEGMENT: tl.constexpr, SEGMENT_P2: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    start = tl.program_id(0) * SEGMENT
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    h = (pid_bh % HKV).to(tl.int64)
    row0 = pid_bh.to(tl.int64) * N + start           # first slot of this segment in (B*HKV, N)
    offs = tl.arange(0, SEGMENT_P2)
    inside = (offs < SEGMENT) & (start + offs < N)
    score = tl.load(SCORES + row0 + offs, mask=inside, other=0.0)
    score = tl.where(start + SEGMENT <= N, score, 0.0)  # a tail segment keeps its order
    key = (score.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (SEGMENT - 1 - offs).to(tl.int64)
    key = tl.sort(tl.where(offs < SEGMENT, key, -1), descending=True)  # padding lanes sort last
    source = start + (SEGMENT - 1 - (key & 0xFFFFFFFF)).to(tl.int32)
    tl.store(POS + row0 + offs, source, mask=inside)
    tl.debug_barrier()  # the gather below reads positions other threads of this program wrote
    offs_d = tl.arange(0, HEAD_DIM)
    for r in range(0, SEGMENT, ROWS):
        rows = r + tl.arange(0, ROWS)
        ok = (rows < SEGMENT) & (start + rows < N)
        src = tl.load(POS + row0 + rows, mask=ok, other=0).to(tl.int64)
        kv = tl.load(K + b * stride_kb + h * stride_kh + src[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None])
        tl.store(KP + (row0 + rows)[:, None] * HEAD_DIM + offs_d[None, :], kv, mask=ok[:, None])
        kv = tl.load(V + b * stride_vb + h * stride_vh + src[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None])
        tl.store(VP + (row0 + rows)[:, None] * HEAD_DIM + offs_d[None, :], kv, mask=ok[:, None])


def segment_permute(scores, k, v, *, segment_size, rows=64, num_warps=4):
    """(k_perm, v_perm, positions): keys of every complete segment sorted by descending `scores`
    (B, Hkv, N) float32, V following, contiguous (B, Hkv, N, D); positions int32 (B, Hkv, N)."""
    B, Hkv, N, D = k.shape
    k_perm = torch.empty((B, Hkv, N, D), dtype=k.dtype, device=k.device)
    v_perm = torch.empty_like(k_perm)
    positions = torch.empty((B, Hkv, N), dtype=torch.int32, device=k.device)
    run(_segment_permute, (triton.cdiv(N, segment_size), B * Hkv),
        (scores, k, v, k_perm, v_perm, positions, *k.stride()[:3], *v.stride()[:3], N, Hkv),
        dict(SEGMENT=segment_size, SEGMENT_P2=triton.next_power_of_2(segment_size), HEAD_DIM=D,
             ROWS=min(rows, triton.next_power_of_2(segment_size))), num_warps=num_warps, num_stages=1)
    return k_perm, v_perm, positions
