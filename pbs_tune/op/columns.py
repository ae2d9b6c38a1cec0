"""Column blocks: the key blocks every query block keeps, chosen by the last query block.

The question of a long prompt sits at its end, and so do the rows whose logits a prefill
returns. PBS already computes, to order the keys, the exact attention of the last query block
against every key (per KV head, the group's mean: op/permutation.py). The keys it weighs most
are what the question asks for (a needle, a definition); after the permutation they lead their
segments, so a few key blocks hold them. Keeping those blocks for every query block (MInference's
"vertical" lines, chosen here by scores PBS pays for anyway) keeps the needle's keys in reach of
every row that may copy it forward, which one mean-pooled query per block misses.
"""
import torch


def column_mask(scores, positions, *, block_size: int, segment_size: int, column_blocks: int,
                sink) -> torch.Tensor:
    """(B, Hkv, NB) int8, 1 for the `column_blocks` key blocks per KV head whose heaviest key has the
    most of the last query block's mass. scores: (B, Hkv, N) float32 per key in original order;
    positions: (B, Hkv, N) int32, the original position of each permuted slot; sink: (B, Hkv) int32,
    the sink block. Not candidates: the sink block (kept anyway) and the blocks of the last segment
    (kept by the rows of that segment, in the future of every other row)."""
    B, Hkv, N = positions.shape
    nb = -(-N // block_size)
    mask = torch.zeros((B, Hkv, nb), dtype=torch.int8, device=positions.device)
    last_segment = ((nb - 1) // (segment_size // block_size)) * (segment_size // block_size)
    budget = min(column_blocks, last_segment - 1)
    if budget <= 0:
        return mask
    permuted = scores.gather(-1, positions.long())
    padded = torch.full((B, Hkv, nb * block_size), float("-inf"), device=scores.device, dtype=scores.dtype)
    padded[..., :N] = permuted
    heaviest = padded.view(B, Hkv, nb, block_size).amax(dim=-1)[..., :last_segment]
    is_sink = torch.arange(last_segment, device=sink.device) == sink[..., None]
    heaviest = heaviest.masked_fill(is_sink, float("-inf"))
    mask[..., :last_segment].scatter_(-1, heaviest.topk(budget, dim=-1).indices, 1)
    return mask
