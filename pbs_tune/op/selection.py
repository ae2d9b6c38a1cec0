"""Stage 2 of PBS-Attn: choose key blocks per query block, as a compact index list.

Scores are mean-pooled queries against mean-pooled (permuted) keys. Per query block the
smallest set of causal key blocks outside its own segment whose softmax mass reaches the
threshold is kept, plus every block of its own (diagonal) segment, the block holding
key 0 (the attention sink) and the column blocks (op/columns.py); the last `tail_blocks` query
blocks keep every causal block. The attend kernel reads only the kept indices.
"""
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..kernels.block_scores import block_lse
from ..kernels.block_select import select_rows
from ..profile.params import PbsParams
from .columns import column_mask
from .permutation import last_block_key_scores

_FULL, _MASKED, _SKIP = 0, 1, 2


@dataclass
class BlockList:
    """Kept key blocks per (batch, query head, query block).

    `index[b, h, i, :count]` are key-block numbers; the first `full` of them need no token
    mask (every key precedes every query of the block), the rest are causal by position.
    Query block i is key block `first_query_block + i`: queries that are the last rows of a
    longer key sequence (chunked prefill) have no rows for the prefix's blocks.
    """

    count: torch.Tensor  # (B, Hq, NQB) int32
    full: torch.Tensor   # (B, Hq, NQB) int32
    index: torch.Tensor  # (B, Hq, NQB, MAXK) int32; entries past `count` are unused
    block_size: int
    segment_size: int | None = None    # set by select_blocks: the candidates follow the permutation
    key_min: torch.Tensor | None = None  # (B, Hkv, NKB) smallest original position per key block
    seqlen: int | None = None          # keys (the whole prefix)
    first_query_block: int = 0

    def kept_blocks(self) -> int:
        return int(self.count.sum())

    def candidate_blocks(self) -> int:
        """Blocks that threshold 1.0 keeps: every block of earlier segments, and the blocks of the
        query's own segment holding a key at or before its last query. Without a permutation
        that is the causal triangle; with one, a permuted diagonal segment has more."""
        B, H, nqb = self.count.shape
        qb = torch.arange(nqb, device=self.count.device) + self.first_query_block
        if self.key_min is None:
            return B * H * int((qb + 1).sum())
        bps = self.segment_size // self.block_size
        dev = self.key_min.device
        nkb = self.key_min.shape[-1]
        seg_first = (qb // bps) * bps
        q_hi = torch.clamp((qb + 1) * self.block_size, max=self.seqlen) - 1
        j = seg_first[:, None] + torch.arange(bps, device=dev)[None, :]
        kmin = self.key_min[..., j.clamp(max=nkb - 1)]                 # (B, Hkv, NQB, BPS)
        diagonal = ((kmin <= q_hi[:, None]) & (j < nkb)).sum()
        group = H // self.key_min.shape[1]
        return int(diagonal) * group + int(seg_first.sum()) * B * H

    def density(self) -> float:
        """Kept blocks over the blocks threshold 1.0 keeps (1.0 at threshold 1.0, permuted or not)."""
        return self.kept_blocks() / self.candidate_blocks()

    def to_dense(self) -> torch.Tensor:
        """(B, Hq, NQB, NKB) bool: which key blocks each query block keeps."""
        B, H, nqb = self.count.shape
        nkb = nqb + self.first_query_block
        cols = torch.arange(self.index.shape[-1], device=self.count.device)
        valid = cols < self.count[..., None]
        kept = torch.zeros((B, H, nqb, nkb + 1), dtype=torch.bool, device=self.count.device)
        kept.scatter_(-1, torch.where(valid, self.index.long(), nkb), True)  # unused slots -> spare column
        return kept[..., :nkb]

    def to_flex_block_mask(self, positions, seqlen):
        """The same kept blocks and causal-by-position masking as a FlexAttention BlockMask."""
        import inspect

        from torch.nn.attention.flex_attention import BlockMask
        if self.first_query_block:
            raise ValueError("to_flex_block_mask takes square attention (queries as long as keys)")
        B, H, nqb = self.count.shape
        group = H // positions.shape[1]
        full_idx = torch.zeros((B, H, nqb, nqb), dtype=torch.int32, device=self.count.device)
        full_idx[..., :self.index.shape[-1]] = self.index
        shift = torch.arange(nqb, device=full_idx.device) + self.full[..., None].long()
        partial_idx = torch.gather(full_idx, -1, shift.clamp(max=nqb - 1))

        def mask_mod(b, h, q_idx, kv_idx):
            return positions[b, h // group, kv_idx] <= q_idx

        kwargs = {}
        params = inspect.signature(BlockMask.from_kv_blocks).parameters
        if "seq_lengths" in params:
            kwargs["seq_lengths"] = (seqlen, seqlen)
        if "compute_q_blocks" in params:
            kwargs["compute_q_blocks"] = False
        return BlockMask.from_kv_blocks((self.count - self.full).contiguous(), partial_idx.contiguous(),
                                        self.full.contiguous(), full_idx.contiguous(),
                                        BLOCK_SIZE=self.block_size, mask_mod=mask_mod, **kwargs)


def block_means(x, block_size, first=0):
    """Mean over consecutive blocks of rows: (..., N, D) -> (..., ceil(N/b), D) float32.
    With `first` > 0 the first block has only `block_size - first` rows (rows that start
    mid-block: a chunk after a cached prefix)."""
    if first:
        head = x[..., : block_size - first, :].mean(dim=-2, keepdim=True, dtype=torch.float32)
        if x.shape[-2] <= block_size - first:
            return head
        return torch.cat([head, block_means(x[..., block_size - first:, :], block_size)], dim=-2)
    n = x.shape[-2]
    n_full = n // block_size
    parts = []
    if n_full:
        body = x[..., : n_full * block_size, :].unflatten(-2, (n_full, block_size))
        parts.append(body.mean(dim=-2, dtype=torch.float32))
    if n % block_size:
        parts.append(x[..., n_full * block_size:, :].mean(dim=-2, keepdim=True, dtype=torch.float32))
    return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]


def block_position_bounds(positions, block_size):
    """Per key block: smallest and largest original position; padding counts as +inf."""
    B, Hkv, N = positions.shape
    nkb = -(-N // block_size)
    big = torch.iinfo(torch.int32).max
    padded = torch.full((B, Hkv, nkb * block_size), big, dtype=torch.int32, device=positions.device)
    padded[..., :N] = positions
    padded = padded.view(B, Hkv, nkb, block_size)
    return padded.amin(dim=-1), padded.amax(dim=-1)


def causal_block_list(heads: int, positions, block_size: int) -> "BlockList":
    """Every causal block of a square prompt, for `heads` query heads: dense attention as a block list
    (the attend kernel's dense reference and its density-1 timing)."""
    B, nb = positions.shape[0], -(-positions.shape[-1] // block_size)
    keep = torch.ones((nb, nb), dtype=torch.bool, device=positions.device).tril().expand(B, heads, nb, nb)
    return block_list_from_mask(keep, positions, block_size)


def block_list_from_mask(keep: torch.Tensor, positions: torch.Tensor, block_size: int) -> BlockList:
    """Compact list from a mask of candidate blocks (a caller's own selection, e.g. an oracle's).

    Blocks whose keys all come after the query block (possible inside a permuted diagonal
    segment) are dropped: they would be fully masked. Full blocks are listed first in
    increasing key-block order, then masked ones.

    Args:
        keep: (B, Hq, NQB, NKB) bool, True where query block i may attend to key block j (permuted order).
        positions: (B, Hkv, N) int32, the original position of each permuted key (`KeyPermutation.positions`).
        block_size: tokens per query and key block; NQB = NKB = ceil(N / block_size).
    """
    B, Hq, nqb, nkb = keep.shape
    Hkv = positions.shape[1]
    group = Hq // Hkv
    N = positions.shape[-1]
    dev = keep.device
    kmin, kmax = block_position_bounds(positions, block_size)          # (B, Hkv, NKB)
    q_lo = torch.arange(nqb, device=dev) * block_size
    q_hi = torch.clamp(q_lo + block_size, max=N) - 1
    kmin = kmin.repeat_interleave(group, dim=1)[:, :, None, :]         # (B, Hq, 1, NKB)
    kmax = kmax.repeat_interleave(group, dim=1)[:, :, None, :]
    cls = torch.full(keep.shape, _MASKED, dtype=torch.int8, device=dev)
    cls.masked_fill_(kmax <= q_lo[:, None], _FULL)
    cls.masked_fill_((kmin > q_hi[:, None]) | ~keep, _SKIP)
    # Compaction by prefix sums (linear, no sort): full blocks first, then masked ones,
    # each in increasing key-block order; skipped blocks go to a spare last column.
    is_full, is_masked = cls == _FULL, cls == _MASKED
    full = is_full.sum(-1, dtype=torch.int32)
    count = full + is_masked.sum(-1, dtype=torch.int32)
    dest = torch.where(is_full, is_full.cumsum(-1, dtype=torch.int32) - 1,
                       full[..., None] + is_masked.cumsum(-1, dtype=torch.int32) - 1)
    dest = torch.where(is_full | is_masked, dest, nkb).long()
    slots = torch.zeros(keep.shape[:-1] + (nkb + 1,), dtype=torch.int32, device=dev)
    slots.scatter_(-1, dest, torch.arange(nkb, dtype=torch.int32, device=dev).expand(keep.shape))
    width = max(1, int(count.max()))
    order = slots[..., :width]
    return BlockList(count=count.contiguous(), full=full.contiguous(),
                     index=order.contiguous(), block_size=block_size)


@functools.lru_cache(maxsize=256)
def _threshold_tensor(values: tuple, device: str) -> torch.Tensor:
    """The (Hq,) float32 thresholds on the device, made once per distinct value set (read-only)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=64)
def _no_columns(B: int, Hkv: int, nb: int, device: str) -> torch.Tensor:
    """No column blocks: a zero mask made once per shape (read-only)."""
    return torch.zeros((B, Hkv, nb), dtype=torch.int8, device=device)


BISECT_FROM = 1024  # blocks per row from which selection bisects instead of sorting (H100: see README)


def bisects(num_blocks: int) -> bool:
    """Whether selection over rows of `num_blocks` key blocks uses the bisection (kernels/block_select.py)."""
    return 1 << max(0, num_blocks - 1).bit_length() >= BISECT_FROM  # the kernel's power-of-two row width


def select_blocks(q: torch.Tensor, k_perm: torch.Tensor, positions: torch.Tensor, *, block_size: int,
                  segment_size: int, threshold: float | Sequence[float], scale: float, estimator: str = "mean",
                  pooled_k: torch.Tensor | None = None, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                  tail_blocks: int = 0, column_blocks: int = 0, k: torch.Tensor | None = None,
                  key_mass: torch.Tensor | None = None) -> BlockList:
    """Stage 2: PBS block selection on permuted keys, as a compact list of the kept key blocks.

    Block logits come from one batched matmul of pooled queries and keys (estimator "mean"), or from
    pooled queries against every key of each block ("lse"); the per-row softmax, threshold, and
    compaction run in one Triton kernel (kernels/block_select.py).

    Args:
        q: (B, Hq, M, D), the last M <= N key positions; its rows are the key blocks holding queries.
        k_perm: (B, Hkv, N, D) keys in permuted order (`KeyPermutation.k`).
        positions: (B, Hkv, N) int32, each slot's original position (`KeyPermutation.positions`).
        block_size: tokens per block (PbsParams.block_size).
        segment_size: tokens per permuted segment, a multiple of block_size.
        threshold: softmax mass each query block keeps, in (0, 1]: one number, or one per query head (Hq).
        scale: softmax scale of the block logits (1 / sqrt(D) in the op).
        estimator: "mean" or "lse" (PbsParams.estimator).
        pooled_k: (B, Hkv, NKB, D) float32 block means of k_perm, NKB = ceil(N / block_size); None: computed.
        bounds: (smallest, largest) original position per key block, each (B, Hkv, NKB) int32; None: computed.
        tail_blocks: PbsParams' retrieval knob; 0 (here the default): off.
        column_blocks: PbsParams' retrieval knob; 0 (here the default): off.
        k: (B, Hkv, N, D) keys in original order; scores the columns where column_blocks > 0 and key_mass is None.
        key_mass: (B, Hkv, N) float32, the last query block's mass per key, original order (`KeyPermutation.scores`).

    Returns:
        BlockList: count, full (B, Hq, NQB) int32 and index (B, Hq, NQB, MAXK) int32, with NQB the key blocks
        holding queries, ceil(N / block_size) - (N - M) // block_size.
    """
    B, Hq, M, D = q.shape
    Hkv, N = k_perm.shape[1], k_perm.shape[2]
    nb = -(-N // block_size)
    first_qb = (N - M) // block_size
    nqb = nb - first_qb
    values = PbsParams(block_size, segment_size, threshold, estimator=estimator, tail_blocks=tail_blocks,
                       column_blocks=column_blocks).per_head(Hq)  # checked there
    sink = ((positions == 0).to(torch.int8).argmax(dim=-1) // block_size).to(torch.int32)
    logits = None
    columns = _no_columns(B, Hkv, nb, str(q.device))
    if min(values) < 1.0:
        if column_blocks and nb > segment_size // block_size:
            if key_mass is None:
                if k is None:
                    raise ValueError("column_blocks > 0 needs key_mass (the permutation's scores) or k, the keys "
                                     "in original order, to find the last query block's heaviest keys")
                key_mass = last_block_key_scores(q, k, block_size=block_size, scale=scale)
            columns = column_mask(key_mass, positions, block_size=block_size, segment_size=segment_size,
                                  column_blocks=column_blocks, sink=sink)
        pooled_q = block_means(q, block_size, (N - M) % block_size).view(B, Hkv, (Hq // Hkv) * nqb, D)
        if estimator == "lse":
            logits = block_lse(pooled_q, k_perm, block_size=block_size, scale=scale)
            # The sink block is kept anyway and, seen key by key, can hold nearly all of a row's mass:
            # counted, it would meet a sink head's threshold alone. The threshold is of the rest.
            logits.scatter_(-1, sink.long()[:, :, None, None].expand(B, Hkv, logits.shape[2], 1), float("-inf"))
            logits = logits.view(B, Hq, nqb, nb)
        else:
            pooled_k = block_means(k_perm, block_size) if pooled_k is None else pooled_k
            logits = torch.matmul(pooled_q, pooled_k.transpose(-1, -2)).mul_(scale).view(B, Hq, nqb, nb)
    kmin, kmax = block_position_bounds(positions, block_size) if bounds is None else bounds
    count, full, index = select_rows(logits, kmin, kmax, sink.contiguous(), columns, heads=Hq, seqlen=N,
                                     block_size=block_size, segment_size=segment_size,
                                     threshold=_threshold_tensor(values, str(q.device)), bisect=bisects(nb),
                                     query_blocks=nqb, tail_blocks=tail_blocks)
    return BlockList(count=count, full=full, index=index, block_size=block_size, segment_size=segment_size,
                     key_min=kmin, seqlen=N, first_query_block=first_qb)
