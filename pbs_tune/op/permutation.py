"""Stage 1 of PBS-Attn: reorder keys (values follow) inside each segment by importance.

Importance of a key is its mean softmax probability from the last query block, which has
seen the whole context. With GQA there is one order per KV head, scored by the mean over
the group's query heads, so K/V are never repeated per query head.
"""
from dataclasses import dataclass

import torch

from ..kernels.key_scores import key_scores


@dataclass
class KeyPermutation:
    """Keys and values in permuted order, with the original position of every slot."""

    k: torch.Tensor          # (B, Hkv, N, D)
    v: torch.Tensor          # (B, Hkv, N, D)
    positions: torch.Tensor  # (B, Hkv, N) int32: original token index of each slot


def last_block_key_scores(q, k, *, block_size, scale):
    """Mean softmax mass each key receives from the last `block_size` queries: (B, Hkv, N).

    Rows are the last query block of every query head of a group, causal inside that
    block. Computed by a two-pass Triton kernel that never holds the (rows, N) logits.
    """
    return key_scores(q, k, rows=min(block_size, q.shape[2]), scale=scale)


def identity_permutation(k, v):
    """The unpermuted baseline: keys stay in place."""
    B, Hkv, N, _ = k.shape
    pos = torch.arange(N, device=k.device, dtype=torch.int32).expand(B, Hkv, N).contiguous()
    return KeyPermutation(k=k, v=v, positions=pos)


def permute_keys(q, k, v, *, block_size, segment_size, scale):
    """Sort keys of every complete segment by descending importance; the tail stays put.

    The permutation never crosses a segment boundary, so keys of earlier segments still
    precede every query of later segments and causality between segments is untouched.
    """
    B, Hkv, N, D = k.shape
    n_full = N // segment_size
    if n_full == 0:
        return identity_permutation(k, v)
    scores = last_block_key_scores(q, k, block_size=block_size, scale=scale)
    head = scores[..., : n_full * segment_size].reshape(B, Hkv, n_full, segment_size)
    local = torch.argsort(head, dim=-1, descending=True, stable=True)
    offsets = torch.arange(n_full, device=k.device).mul_(segment_size)[:, None]
    order = (local + offsets).reshape(B, Hkv, n_full * segment_size)
    tail = torch.arange(n_full * segment_size, N, device=k.device).expand(B, Hkv, -1)
    order = torch.cat([order, tail], dim=-1)                  # (B, Hkv, N) int64

    flat = (order + torch.arange(B * Hkv, device=k.device).view(B, Hkv, 1) * N).reshape(-1)
    k_perm = k.reshape(B * Hkv * N, D).index_select(0, flat).view(B, Hkv, N, D)
    v_perm = v.reshape(B * Hkv * N, D).index_select(0, flat).view(B, Hkv, N, D)
    return KeyPermutation(k=k_perm, v=v_perm, positions=order.to(torch.int32).contiguous())
