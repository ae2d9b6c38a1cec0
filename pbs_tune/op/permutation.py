"""Stage 1 of PBS-Attn: reorder keys (values follow) inside each segment by importance.

Importance of a key is its mean softmax probability from the last query block, which has
seen the whole context. With GQA there is one order per KV head, scored by the mean over
the group's query heads, so K/V are never repeated per query head.
"""
from dataclasses import dataclass

import torch

from ..kernels.key_scores import key_scores
from ..kernels.segment_sort import segment_permute


@dataclass
class KeyPermutation:
    """Keys and values in permuted order, with the original position of every slot."""

    k: torch.Tensor          # (B, Hkv, N, D)
    v: torch.Tensor          # (B, Hkv, N, D)
    positions: torch.Tensor  # (B, Hkv, N) int32: original token index of each slot
    scores: torch.Tensor | None = None  # (B, Hkv, N) float32: last query block's mass per key, original order


def last_block_key_scores(q, k, *, block_size, scale):
    """Mean softmax mass each key receives from the last `block_size` queries: (B, Hkv, N).

    Rows are the last query block of every query head of a group, causal inside that
    block. Computed by a two-pass Triton kernel that never holds the (rows, N) logits.
    """
    return key_scores(q, k, rows=min(block_size, q.shape[2]), scale=scale)


def identity_permutation(k: torch.Tensor, v: torch.Tensor) -> KeyPermutation:
    """The unpermuted baseline: keys stay in place.

    Args:
        k, v: (B, Hkv, N, D) keys and values, held as they are (no copy).
    """
    B, Hkv, N, _ = k.shape
    pos = torch.arange(N, device=k.device, dtype=torch.int32).expand(B, Hkv, N).contiguous()
    return KeyPermutation(k=k, v=v, positions=pos)


def permute_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int, segment_size: int,
                 scale: float) -> KeyPermutation:
    """Stage 1: sort the keys of every complete segment by descending importance; the tail stays put.

    The permutation never crosses a segment boundary, so keys of earlier segments still
    precede every query of later segments and causality between segments is untouched.

    Args:
        q: (B, Hq, M, D), the last M <= N key positions; its last min(block_size, M) rows score the keys.
        k: (B, Hkv, N, D) keys in original order, Hq % Hkv == 0 (one order per KV head, over its query heads).
        v: (B, Hkv, N, D) values; they move with their keys.
        block_size: tokens per block (the scoring rows).
        segment_size: tokens per permuted segment; with N < segment_size nothing moves.
        scale: softmax scale of the scoring (1 / sqrt(D) in the op).

    Returns:
        KeyPermutation: k, v (B, Hkv, N, D) permuted, positions (B, Hkv, N) int32 (each slot's original
        index) and scores (B, Hkv, N) float32 in original order; with N < segment_size, k and v as given, no scores.
    """
    if k.shape[2] < segment_size:
        return identity_permutation(k, v)
    scores = last_block_key_scores(q, k, block_size=block_size, scale=scale)
    k_perm, v_perm, positions = segment_permute(scores, k, v, segment_size=segment_size)
    return KeyPermutation(k=k_perm, v=v_perm, positions=positions, scores=scores)
