"""Key importance for PBS's permutation: mean softmax mass from the last query block.

Rows are the last `rows` queries of every query head of a GQA group (R = group * rows);
each key's score is the mean over those R rows of softmax(q k^T * scale), causal. Two
passes over the keys, never holding the (R, N) matrix: pass 1 writes each key chunk's
row max and row sum-of-exp, torch combines them into the row normaliser, pass 2
recomputes the logits and averages the normalised probabilities per key. The queries may be
the last rows of a longer key sequence (chunked prefill): query row r sits at key position
`Q_OFF + r`.
"""
import torch
import triton
import triton.language as tl

from .launch import run


@triton.jit
def _last_block_queries(Q, b, hkv, tile, stride_qb, stride_qh, stride_qn, N, Q_OFF, ROWS, R, GROUP,
                        HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
    """Load BLOCK_R of the R last-block query rows of KV head `hkv`; returns (q, pos, ok)."""
    i = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = i < R
    pos = N - ROWS + i % ROWS
    head = hkv * GROUP + i // ROWS
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = Q + b * stride_qb + head.to(tl.int64)[:, None] * stride_qh + (pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :]
    return tl.load(ptrs, mask=ok[:, None], other=0.0), pos, ok


@triton.jit
def _logits(q, K, b, hkv, pid_k, q_pos, row_ok, stride_kb, stride_kh, stride_kn, N, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, HEAD_DIM)
    k = tl.load(K + b * stride_kb + hkv * stride_kh + offs_k[:, None] * stride_kn + offs_d[None, :],
                mask=(offs_k < N)[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    valid = (offs_k[None, :] <= q_pos[:, None]) & (offs_k[None, :] < N) & row_ok[:, None]
    return tl.where(valid, s, float("-inf")), offs_k


@triton.jit(do_not_specialize=["N", "Q_OFF", "ROWS", "R", "GROUP", "HKV", "NCHUNK"])
def _key_scores_stats(Q, K, M_PART, L_PART, qk_scale,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                      N, Q_OFF, ROWS, R, GROUP, HKV, NCHUNK,
                      HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hkv = (pid_bh % HKV).to(tl.int64)
    part = (pid_bh.to(tl.int64) * NCHUNK + pid_k) * R
    for tile in range(0, tl.cdiv(R, BLOCK_R)):
        q, q_pos, row_ok = _last_block_queries(Q, b, hkv, tile, stride_qb, stride_qh, stride_qn, N, Q_OFF, ROWS, R, GROUP,
                                               HEAD_DIM, BLOCK_R)
        s, _ = _logits(q, K, b, hkv, pid_k, q_pos, row_ok, stride_kb, stride_kh, stride_kn, N, qk_scale,
                       HEAD_DIM, BLOCK_K)
        m = tl.maximum(tl.max(s, 1), -1.0e30)
        l_sum = tl.sum(tl.math.exp2(s - m[:, None]), 1)
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
        tl.store(M_PART + part + rows, m, mask=row_ok)
        tl.store(L_PART + part + rows, l_sum, mask=row_ok)


@triton.jit(do_not_specialize=["N", "Q_OFF", "ROWS", "R", "GROUP", "HKV"])
def _key_scores_mean(Q, K, M_ROW, L_ROW, SCORES, qk_scale,
                     stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                     N, Q_OFF, ROWS, R, GROUP, HKV,
                     HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hkv = (pid_bh % HKV).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    for tile in range(0, tl.cdiv(R, BLOCK_R)):
        q, q_pos, row_ok = _last_block_queries(Q, b, hkv, tile, stride_qb, stride_qh, stride_qn, N, Q_OFF, ROWS, R, GROUP,
                                               HEAD_DIM, BLOCK_R)
        s, offs_k = _logits(q, K, b, hkv, pid_k, q_pos, row_ok, stride_kb, stride_kh, stride_kn, N, qk_scale,
                            HEAD_DIM, BLOCK_K)
        rows = pid_bh.to(tl.int64) * R + tile * BLOCK_R + tl.arange(0, BLOCK_R)
        m = tl.load(M_ROW + rows, mask=row_ok, other=0.0)
        inv_l = 1.0 / tl.load(L_ROW + rows, mask=row_ok, other=1.0)
        p = tl.math.exp2(s - m[:, None]) * inv_l[:, None]
        acc += tl.sum(p, 0)
    tl.store(SCORES + pid_bh.to(tl.int64) * N + offs_k, acc / R, mask=offs_k < N)


def key_scores(q, k, *, rows, scale, block_r=64, block_k=64, num_warps=4, num_stages=3):
    """(B, Hkv, N) float32 mean softmax mass of each key from the last `rows` queries.
    q (B, Hq, M, D) holds the last M <= N positions of k (B, Hkv, N, D); rows <= M."""
    B, Hq, M, D = q.shape
    N = k.shape[2]
    Hkv = k.shape[1]
    group = Hq // Hkv
    r_total = group * rows
    nchunk = triton.cdiv(N, block_k)
    dev = q.device
    m_part = torch.empty((B * Hkv, nchunk, r_total), device=dev, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    qk_scale = scale * 1.4426950408889634
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    grid = (nchunk, B * Hkv)
    tiles = dict(HEAD_DIM=D, BLOCK_R=block_r, BLOCK_K=block_k)
    run(_key_scores_stats, grid, (q, k, m_part, l_part, qk_scale, *strides, N, N - M, rows, r_total, group, Hkv, nchunk),
        tiles, num_warps=num_warps, num_stages=num_stages)
    m_row = m_part.amax(dim=1)
    l_row = (l_part * torch.exp2(m_part - m_row[:, None, :])).sum(dim=1)
    scores = torch.empty((B, Hkv, N), device=dev, dtype=torch.float32)
    run(_key_scores_mean, grid, (q, k, m_row.contiguous(), l_row.contiguous(), scores, qk_scale, *strides,
                                 N, N - M, rows, r_total, group, Hkv),
        tiles, num_warps=num_warps, num_stages=num_stages)
    return scores
