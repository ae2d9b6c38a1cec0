"""The attend kernel's Hopper path (sm_90+): K/V tiles by TMA, GQA-grouped tile order.

Same contract and arithmetic as `attend._attend_fwd` (see there); what changes is how it moves
data and walks its work (H100 measurements that chose each point: benchmarks/results/
h100_hopper_variants_v*.json and HOPPER_KERNEL.md there):
- Kept K and V blocks are gathered by offset through tensor descriptors built on the device
  (TMA bulk copies into shared memory): one box of a rank-4 descriptor over (batch, kv head,
  key, dim), so any 16-byte aligned strides with a unit last dimension work, and keys past the
  sequence end read as zeros. With one key tile per block the next block index is loaded one
  step ahead, so no copy waits on it and the pipeline keeps `num_stages` tiles in flight. Q and O move by plain loads and stores: a TMA
  store needs a 32 KB staging tile that would cost one stage of the pipeline.
- Work is numbered one (batch, kv head) after another; inside, query tiles go heaviest first
  and the query heads of one GQA group sit side by side, so that programs running together
  read the same K/V blocks through L2 (1.23x faster than heaviest-first across all heads at
  128k, density 0.2).
- A program walks tiles `tile, tile + grid, ...`: with one program per tile (the default) the
  hardware schedules them; `programs_per_sm` > 0 makes the grid persistent, which pays only
  where tiles are tiny (short prompts at low density).
Device descriptors need global scratch memory: `attend_launch` sets Triton's allocator for the
JIT, and the kernel library's launcher allocates it itself (`launch.BoundKernel`).
"""
import triton
import triton.language as tl

from .online_softmax import (causal_softmax_step, finish, initial_state, kept_blocks, online_softmax_step,
                             query_rows)


@triton.jit
def _kv_tiles(k_desc, v_desc, b, hkv, start_n, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    k = k_desc.load([b, hkv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    v = v_desc.load([b, hkv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    return k, v


@triton.jit(do_not_specialize=["B", "N", "Q_OFF", "H", "HKV", "GROUP", "NQB", "MAXK", "NUM_TILES", "stride_pb", "stride_ph"])
def _attend_fwd_tma(
    Q, K, V, POS, O, LSE, KV_COUNT, KV_FULL, KV_IDX,
    qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_pb, stride_ph,
    B, N, Q_OFF, H, HKV, GROUP, NQB, MAXK, NUM_TILES,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEL_BLOCK: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    k_desc = tl.make_tensor_descriptor(K, shape=[B, HKV, N, HEAD_DIM], strides=[stride_kb, stride_kh, stride_kn, 1],
                                       block_shape=[1, 1, BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(V, shape=[B, HKV, N, HEAD_DIM], strides=[stride_vb, stride_vh, stride_vn, 1],
                                       block_shape=[1, 1, BLOCK_N, HEAD_DIM])
    SUB: tl.constexpr = SEL_BLOCK // BLOCK_N
    num_m = tl.cdiv(N - (Q_OFF // SEL_BLOCK) * SEL_BLOCK, BLOCK_M)  # query tiles (see query_rows)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for tile in range(tl.program_id(0), NUM_TILES, tl.num_programs(0)):
        bkv = tile // (num_m * GROUP)
        r = tile % (num_m * GROUP)
        start_m = num_m - 1 - r // GROUP
        b = bkv // HKV
        hkv = bkv % HKV
        h = hkv * GROUP + r % GROUP
        pid_bh = b * H + h
        offs_m, rows, row_ok = query_rows(start_m, N, Q_OFF, BLOCK_M, SEL_BLOCK)
        q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qn
                    + offs_d[None, :], mask=row_ok[:, None], other=0.0)

        n_full, n_total, idx_base = kept_blocks(KV_COUNT, KV_FULL, KV_IDX, pid_bh, start_m, NQB, MAXK, BLOCK_M,
                                                SEL_BLOCK)
        m_i, l_i, acc = initial_state(BLOCK_M, HEAD_DIM)

        # Kept blocks entirely before every query of the tile: no mask.
        if SUB == 1:
            kb_next = tl.load(idx_base, mask=n_full > 0, other=0)
            for t in range(0, n_full):
                start_n = kb_next * SEL_BLOCK
                kb_next = tl.load(idx_base + t + 1, mask=t + 1 < n_full, other=0)
                k, v = _kv_tiles(k_desc, v_desc, b, hkv, start_n, BLOCK_N, HEAD_DIM)
                acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale)
        else:
            for t in range(0, n_full * SUB):
                start_n = tl.load(idx_base + t // SUB) * SEL_BLOCK + (t % SUB) * BLOCK_N
                k, v = _kv_tiles(k_desc, v_desc, b, hkv, start_n, BLOCK_N, HEAD_DIM)
                acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale)

        # Blocks of the diagonal segment: causal by the keys' original positions; keys past N
        # read as zeros and carry no position (masked by the same compare).
        pos_base = POS + b.to(tl.int64) * stride_pb + hkv.to(tl.int64) * stride_ph
        for t in range(n_full * SUB, n_total * SUB):
            start_n = tl.load(idx_base + t // SUB) * SEL_BLOCK + (t % SUB) * BLOCK_N
            k, v = _kv_tiles(k_desc, v_desc, b, hkv, start_n, BLOCK_N, HEAD_DIM)
            pos = tl.load(pos_base + start_n + offs_n, mask=start_n + offs_n < N, other=2147483647)
            acc, l_i, m_i = causal_softmax_step(acc, l_i, m_i, q, k, v, pos, offs_m, qk_scale)

        out, lse = finish(acc, l_i, m_i)
        tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_on
                 + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
        if STORE_LSE:
            tl.store(LSE + pid_bh.to(tl.int64) * (N - Q_OFF) + rows, lse, mask=row_ok)
