"""What both attend kernels do per query tile: find its kept-block list, keep the online-softmax
state, update it per key tile (scores in base 2) and normalise at the end."""
import triton
import triton.language as tl


@triton.jit
def online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale):
    """One online-softmax update with a key tile that needs no mask (scores in base 2)."""
    qk = tl.dot(q, tl.trans(k))
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_ij


@triton.jit
def causal_softmax_step(acc, l_i, m_i, q, k, v, pos, offs_m, qk_scale):
    """The same update for a key tile of the diagonal segment: causal by original position."""
    qk = tl.dot(q, tl.trans(k)) * qk_scale
    qk = tl.where(pos[None, :] <= offs_m[:, None], qk, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_ij


@triton.jit
def query_rows(start_m, N, Q_OFF, BLOCK_M: tl.constexpr, SEL_BLOCK: tl.constexpr):
    """Key positions of query tile `start_m`, their rows in q (position - Q_OFF) and which exist.
    Tiles start at the key block holding the first query, so they nest in selection blocks."""
    offs_m = (Q_OFF // SEL_BLOCK) * SEL_BLOCK + start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    return offs_m, offs_m - Q_OFF, (offs_m >= Q_OFF) & (offs_m < N)


@triton.jit
def kept_blocks(KV_COUNT, KV_FULL, KV_IDX, pid_bh, start_m, NQB, MAXK, BLOCK_M: tl.constexpr,
                SEL_BLOCK: tl.constexpr):
    """(blocks needing no mask, all kept blocks, pointer to their indices) of this query tile."""
    sel = pid_bh.to(tl.int64) * NQB + (start_m * BLOCK_M) // SEL_BLOCK
    return tl.load(KV_FULL + sel), tl.load(KV_COUNT + sel), KV_IDX + sel * MAXK


@triton.jit
def initial_state(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Running max, running sum and accumulator. A finite floor instead of -inf for the max
    keeps fully masked tiles NaN-free."""
    return (tl.full([BLOCK_M], -1.0e30, dtype=tl.float32), tl.zeros([BLOCK_M], dtype=tl.float32),
            tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32))


@triton.jit
def finish(acc, l_i, m_i):
    """The normalised output and the natural-log LSE of the kept scores (recall = exp(lse_sparse -
    lse_dense)); rows with nothing kept give zeros."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    return acc / l_safe[:, None], (m_i + tl.math.log2(l_safe)) * 0.6931471805599453
