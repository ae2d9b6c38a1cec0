"""The online-softmax update that both attend kernels apply per key tile (scores in base 2)."""
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
