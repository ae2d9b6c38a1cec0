"""Block-sparse FlashAttention forward over a compact list of kept key blocks.

Each program owns BLOCK_M query rows of one (batch, query head). The queries may be the last
rows of a longer key sequence (chunked prefill over a cached prefix): query row r sits at key
position `Q_OFF + r`, and query tiles are aligned to key blocks in those positions, so the first
tile may start before row 0 (its rows before `Q_OFF` are masked). Its selection block
(`SEL_BLOCK` positions, the PBS block size) has a list of kept key blocks, ordered so that
blocks needing no token mask come first (`KV_FULL` of them) and blocks that need the
causal mask by original position come last (up to `KV_COUNT`). The kernel never scans a
dense mask: it reads exactly `KV_COUNT` indices. Launch parameters are plain arguments;
choosing them is the tuner's job, so there is no `@triton.autotune` here. This kernel runs on
any CUDA GPU Triton supports; `attend_hopper.py` is the sm_90+ variant `attend_launch` picks
with `tma=True`.
"""
import functools

import torch
import triton
import triton.language as tl

from .attend_hopper import _attend_fwd_tma
from .launch import run
from .online_softmax import (causal_softmax_step, finish, initial_state, kept_blocks, online_softmax_step,
                             query_rows)


@triton.jit
def _unmasked_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d, stride_kn, stride_vn, qk_scale):
    """Load one key block that needs no mask and fold it in."""
    k = tl.load(k_base + (start_n + offs_n)[:, None] * stride_kn + offs_d[None, :])
    v = tl.load(v_base + (start_n + offs_n)[:, None] * stride_vn + offs_d[None, :])
    return online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale)


# Lengths and head counts vary per call: not specialising on them lets one compiled kernel
# (the tuner's ahead-of-time cache) serve every sequence length.
@triton.jit(do_not_specialize=["N", "Q_OFF", "H", "GROUP", "NQB", "MAXK", "stride_pb", "stride_ph"])
def _attend_fwd(
    Q, K, V, POS, O, LSE, KV_COUNT, KV_FULL, KV_IDX,
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_pb, stride_ph,
    N, Q_OFF, H, GROUP, NQB, MAXK,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEL_BLOCK: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    # Heaviest query tiles (late in the sequence) are launched first to shorten the tail.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hkv = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    offs_m, rows, row_ok = query_rows(start_m, N, Q_OFF, BLOCK_M, SEL_BLOCK)  # key positions, q rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh
    pos_base = POS + b * stride_pb + hkv * stride_ph

    n_full, n_total, idx_base = kept_blocks(KV_COUNT, KV_FULL, KV_IDX, pid_bh, start_m, NQB, MAXK, BLOCK_M,
                                            SEL_BLOCK)
    m_i, l_i, acc = initial_state(BLOCK_M, HEAD_DIM)
    SUB: tl.constexpr = SEL_BLOCK // BLOCK_N

    # Kept blocks entirely before every query of the tile: no mask, no bounds checks.
    if SUB == 1:
        # The next block index is loaded one iteration ahead so the K/V loads never wait on
        # it (H100: 7% faster at 128k, equal to a loop with no index at all). With SUB > 1
        # the same prefetch measured slower, so that case reads the index in place.
        kb_next = tl.load(idx_base, mask=n_full > 0, other=0)
        for t in range(0, n_full):
            start_n = kb_next * SEL_BLOCK
            kb_next = tl.load(idx_base + t + 1, mask=t + 1 < n_full, other=0)
            acc, l_i, m_i = _unmasked_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d,
                                           stride_kn, stride_vn, qk_scale)
    else:
        for t in range(0, n_full * SUB):
            start_n = tl.load(idx_base + t // SUB) * SEL_BLOCK + (t % SUB) * BLOCK_N
            acc, l_i, m_i = _unmasked_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d,
                                           stride_kn, stride_vn, qk_scale)

    # Blocks of the diagonal segment: causal by the keys' original positions. Keys past N
    # carry no position (loaded as a huge value) and are masked with the same compare.
    for t in range(n_full * SUB, n_total * SUB):
        kb = tl.load(idx_base + t // SUB)
        start_n = kb * SEL_BLOCK + (t % SUB) * BLOCK_N
        col_ok = (start_n + offs_n) < N
        k = tl.load(k_base + (start_n + offs_n)[:, None] * stride_kn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + (start_n + offs_n)[:, None] * stride_vn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        pos = tl.load(pos_base + start_n + offs_n, mask=col_ok, other=2147483647)
        acc, l_i, m_i = causal_softmax_step(acc, l_i, m_i, q, k, v, pos, offs_m, qk_scale)

    out, lse = finish(acc, l_i, m_i)
    o_ptrs = O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        tl.store(LSE + pid_bh.to(tl.int64) * (N - Q_OFF) + rows, lse, mask=row_ok)


def attend_launch(q, k, v, positions, kv_count, kv_full, kv_index, *, block_size, scale,
                  block_m, block_n, num_warps, num_stages, tma=False, programs_per_sm=0, out=None,
                  return_lse=False):
    """Launch the kernel. Inputs are assumed validated by the caller (see pbs_tune.op).

    q: (B, Hq, M, D), the last M <= N positions; k, v: (B, Hkv, N, D) in permuted key order;
    positions: (B, Hkv, N) int32 original key positions; kv_count/kv_full: (B, Hq, NQB) int32
    for the key blocks holding queries; kv_index: (B, Hq, NQB, MAXK) int32. `tma` runs the Hopper
    kernel (attend_hopper.py), on a persistent grid of `programs_per_sm` programs per SM if > 0.
    Returns out (and the fp32 LSE (B, Hq, M) if asked).
    """
    B, H, M, D = q.shape
    N = k.shape[2]
    q_off = N - M
    first = (q_off // block_size) * block_size  # the first query tile starts on a key block
    group = H // k.shape[1]
    nqb, maxk = kv_count.shape[-1], kv_index.shape[-1]
    if out is None:
        out = torch.empty_like(q)
    lse = torch.empty((B, H, M), device=q.device, dtype=torch.float32) if return_lse else out
    args = (q, k, v, positions, out, lse, kv_count, kv_full, kv_index,
            scale * 1.4426950408889634,  # softmax scale * log2(e): the kernels work in base 2
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *positions.stride()[:2])
    consts = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, SEL_BLOCK=block_size, STORE_LSE=return_lse)
    m_tiles = triton.cdiv(N - first, block_m)
    if tma:
        tiles = m_tiles * B * H
        programs = min(tiles, programs_per_sm * _sm_count(q.device)) if programs_per_sm else tiles
        _ensure_allocator()
        run(_attend_fwd_tma, (programs,), args + (B, N, q_off, H, k.shape[1], group, nqb, maxk, tiles), consts,
            num_warps=num_warps, num_stages=num_stages)
    else:
        run(_attend_fwd, (m_tiles, B * H), args + (N, q_off, H, group, nqb, maxk), consts,
            num_warps=num_warps, num_stages=num_stages)
    return (out, lse) if return_lse else out


INTERPRETER_SMS = 3  # under TRITON_INTERPRET a persistent grid still walks several tiles per program


@functools.lru_cache(maxsize=None)
def _sm_count(device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _scratch(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator():
    """Device-side tensor descriptors live in global scratch that Triton's JIT asks an allocator
    for: where none is set (Triton keeps it per context), set one backed by torch's caching
    allocator; an allocator the caller set stays."""
    try:
        from triton.runtime._allocation import NullAllocator, _allocator
        if not isinstance(_allocator.get(), NullAllocator):
            return
    except ImportError:  # another Triton layout: set ours
        pass
    triton.set_allocator(_scratch)
