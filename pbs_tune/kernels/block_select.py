"""PBS block selection for one query block per program, straight into the compact list.

Each program takes one row of block logits (pooled query vs pooled permuted keys), turns
the causal candidates outside its own segment into a softmax, keeps the smallest set whose
mass reaches its query head's threshold (ties with the smallest kept probability are kept too),
adds the diagonal segment, the sink block and the column blocks of its KV head (key blocks
every query block keeps: the ones holding the heaviest keys of the last query block, op/columns.py),
and writes the kept key blocks: those whose keys all precede the query block first (no mask needed),
then the ones needing the causal mask by position. Blocks of the diagonal segment whose
keys all come after the query block are dropped. The last TAIL query blocks (the rows whose logits
a prefill returns: the question) keep every causal key block, exact like threshold 1.

Two ways to find the smallest kept probability `p_min`, the same set up to float rounding:
sort descending and take the prefix whose mass before each element is under the threshold, or
(`BISECT`) search the float32 bit patterns of [0, 1] for the smallest t whose mass strictly above
it is under the threshold: 31 masked row sums instead of a bitonic sort, which matters for long
rows (block 64 at 128k sorts 2048-wide rows).
"""
import torch
import triton
import triton.language as tl

from .launch import run


@triton.jit(do_not_specialize=["N", "NB", "QB0", "NQB", "BPS", "BS", "H", "GROUP", "TAIL"])
def _select_rows(LOGITS, KMIN, KMAX, SINK, COLUMNS, COUNT, FULL, INDEX, THRESHOLD,
                 N, NB, QB0, NQB, BPS, BS, H, GROUP, TAIL,
                 NB_P2: tl.constexpr, KEEP_ALL: tl.constexpr, BISECT: tl.constexpr):
    qb = QB0 + tl.program_id(0)  # query rows start in key block QB0 (chunked prefill), else 0
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    hkv = (pid_bh % H) // GROUP
    row = pid_bh.to(tl.int64) * NQB + tl.program_id(0)
    kb = tl.arange(0, NB_P2)
    seg_first = (qb // BPS) * BPS
    outside = kb < seg_first
    diagonal = (kb >= seg_first) & (kb < seg_first + BPS) & (kb < NB)

    if KEEP_ALL:
        chosen = outside
    else:
        x = tl.load(LOGITS + row * NB + kb, mask=outside, other=float("-inf"))
        m = tl.max(x, 0)
        m = tl.where(m == float("-inf"), 0.0, m)
        p = tl.where(outside, tl.exp(x - m), 0.0)
        p = p / tl.maximum(tl.sum(p, 0), 1.0e-30)
        threshold = tl.load(THRESHOLD + pid_bh % H)  # one threshold per query head
        if BISECT:
            # Invariant: mass above float(lo) >= threshold > mass above float(hi); 1.0 is 0x3F800000.
            lo = -1
            hi = 0x3F800000
            for _ in range(31):
                mid = (lo + hi) // 2
                above = tl.sum(tl.where(p > mid.to(tl.float32, bitcast=True), p, 0.0), 0)
                lo = tl.where(above < threshold, lo, mid)
                hi = tl.where(above < threshold, mid, hi)
            p_min = hi.to(tl.float32, bitcast=True)
        else:
            ps = tl.sort(p, descending=True)
            take = (tl.cumsum(ps, 0) - ps) < threshold
            p_min = tl.min(tl.where(take, ps, float("inf")), 0)
        chosen = tl.where(qb >= NB - TAIL, outside, outside & (p >= p_min))

    kv_row = (b * (H // GROUP) + hkv).to(tl.int64) * NB
    sink = tl.load(SINK + b * (H // GROUP) + hkv)
    column = tl.load(COLUMNS + kv_row + kb, mask=kb < NB, other=0) != 0
    keep = chosen | diagonal | (kb == sink) | column
    kmin = tl.load(KMIN + kv_row + kb, mask=kb < NB, other=2147483647)
    kmax = tl.load(KMAX + kv_row + kb, mask=kb < NB, other=2147483647)
    q_lo = qb * BS
    q_hi = tl.minimum(q_lo + BS, N) - 1
    is_full = keep & (kmax <= q_lo)
    is_masked = keep & (kmax > q_lo) & (kmin <= q_hi)
    n_full = tl.sum(is_full.to(tl.int32), 0)
    n_masked = tl.sum(is_masked.to(tl.int32), 0)
    slot_full = tl.cumsum(is_full.to(tl.int32), 0) - 1
    slot_masked = n_full + tl.cumsum(is_masked.to(tl.int32), 0) - 1
    tl.store(INDEX + row * NB + slot_full, kb, mask=is_full)
    tl.store(INDEX + row * NB + slot_masked, kb, mask=is_masked)
    tl.store(FULL + row, n_full)
    tl.store(COUNT + row, n_full + n_masked)


def select_rows(logits, kmin, kmax, sink, columns, *, heads, seqlen, block_size, segment_size, threshold,
                bisect=False, query_blocks=None, tail_blocks=0):
    """Compact kept-block list (count, full, index) from (B, Hq, NQB, NB) block logits: rows for the
    last NQB of the NB key blocks (the ones holding queries; NQB = NB without a cached prefix).

    `threshold`: (Hq,) float32 tensor, one per query head. `logits` may be None when every
    threshold is >= 1 (every candidate kept). kmin/kmax: (B, Hkv, NB) int32 position bounds
    of the permuted key blocks; sink: (B, Hkv) int32 sink block; columns: (B, Hkv, NB) int8, nonzero
    for the key blocks every row keeps. `tail_blocks`: the last so many key blocks' query rows keep
    every causal block (their logits are not read). `bisect`: find the kept set by
    bisection instead of a sort (the op decides by row width: pbs_tune.op.selection.bisects).
    """
    B, Hkv, nb = kmin.shape
    query_blocks = query_blocks or nb
    dev = kmin.device
    count = torch.empty((B, heads, query_blocks), dtype=torch.int32, device=dev)
    full = torch.empty_like(count)
    index = torch.empty((B, heads, query_blocks, nb), dtype=torch.int32, device=dev)  # read only up to count
    nb_p2 = triton.next_power_of_2(nb)
    keep_all = logits is None
    run(_select_rows, (query_blocks, B * heads), (
        kmin if keep_all else logits, kmin, kmax, sink, columns, count, full, index, threshold,
        seqlen, nb, nb - query_blocks, query_blocks, segment_size // block_size, block_size, heads, heads // Hkv,
        tail_blocks),
        dict(NB_P2=nb_p2, KEEP_ALL=keep_all, BISECT=bool(bisect) and not keep_all),
        num_warps=4 if nb_p2 <= 2048 else 8, num_stages=3)
    return count, full, index
