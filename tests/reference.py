"""Float64 torch references for the tests (materialise N x N: small sizes only)."""
import torch


def allowed_matrix(blocks, positions, n, group):
    """(B, Hq, N, N) bool over permuted key slots: kept block and original position <= query."""
    bs = blocks.block_size
    kept = blocks.to_dense().cpu()
    tokens = kept.repeat_interleave(bs, dim=2).repeat_interleave(bs, dim=3)[:, :, :n, :n]
    pos = positions.repeat_interleave(group, dim=1).cpu()          # (B, Hq, N)
    causal = pos[:, :, None, :] <= torch.arange(n)[None, None, :, None]
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
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    return masked_attention(q, k, v, allowed, scale)


def rel_l2(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())
