"""Float64 torch references and random inputs shared by the tests (materialise N x N: small sizes only)."""
import math

import torch


def random_qkv(b, hq, hkv, n, d, dtype=torch.float32, n_keys=None):
    """Fresh random q (b, hq, n, d) and k, v (b, hkv, n_keys or n, d): the queries are the last n keys."""
    n_keys = n_keys or n
    return (torch.randn(b, hq, n, d, dtype=dtype), torch.randn(b, hkv, n_keys, d, dtype=dtype),
            torch.randn(b, hkv, n_keys, d, dtype=dtype))


def reference_for(q, perm, blocks):
    """Float64 attention over exactly the kept blocks of `blocks`, causal by original position."""
    allowed = allowed_matrix(blocks, perm.positions, q.shape[2], q.shape[1] // perm.k.shape[1])
    return masked_attention(q, perm.k, perm.v, allowed, 1 / math.sqrt(q.shape[-1]))


def allowed_matrix(blocks, positions, n, group):
    """(B, Hq, n, N) bool over permuted key slots: kept block and original position <= query.
    The n queries are the last n of the N = positions.shape[-1] key positions."""
    bs = blocks.block_size
    keys = positions.shape[-1]
    query_pos = torch.arange(keys - n, keys)
    kept = blocks.to_dense().cpu()                                  # (B, Hq, NQB, NKB)
    rows = kept[:, :, query_pos // bs - blocks.first_query_block]   # (B, Hq, n, NKB)
    tokens = rows.repeat_interleave(bs, dim=3)[..., :keys]
    pos = positions.repeat_interleave(group, dim=1).cpu()          # (B, Hq, N)
    causal = pos[:, :, None, :] <= query_pos[None, None, :, None]
    return tokens & causal


def masked_attention(q, k, v, allowed, scale):
    """Softmax attention in float64 restricted to `allowed`; K/V repeated for GQA."""
    group = q.shape[1] // k.shape[1]
    qd, kd, vd = (t.detach().cpu().double() for t in (q, k, v))
    kd = kd.repeat_interleave(group, dim=1)
    vd = vd.repeat_interleave(group, dim=1)
    s = (qd @ kd.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


def causal_attention(q, k, v, scale):
    """Causal attention of the last q.shape[2] positions over all k.shape[2] keys."""
    n, keys = q.shape[2], k.shape[2]
    allowed = torch.ones(n, keys, dtype=torch.bool).tril(diagonal=keys - n)
    return masked_attention(q, k, v, allowed, scale)


def rel_l2(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())
