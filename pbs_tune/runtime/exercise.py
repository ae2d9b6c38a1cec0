"""Running every kernel a profile needs, once: what a library build compiles, what the loader
warms up at load time, and what the CPU tests compare with the kernels real calls launch."""
import torch


def exercise(profile, device="cuda"):
    """Run every kernel the profile's runnable entries (and their layers' plans) can launch, each
    once: what the library must hold. The build compiles what this runs; the CPU tests run it in
    the interpreter and compare its kernel keys with those of real calls (launch.keys_seen)."""
    entries = profile.for_gpu(profile.gpu)
    lengths = sorted({e.seqlen for e in entries})
    for e in entries:
        for params, lc in e.configs():
            run_config_once(e, params, lc, e.seqlen, device)
            run_select_buckets(e, params, select_range(e, params, lengths), device)


def select_range(entry, params, lengths) -> tuple:
    """(shortest, longest) prompt whose selection kernel a config of this entry runs: from the
    loader's warm-up length to the next tuned length (4x its own for the longest)."""
    longer = [n for n in lengths if n > entry.seqlen]
    return prewarm_length(params), (longer[0] - 1) if longer else 4 * entry.seqlen


def run_config_once(entry, params, launch_config, seqlen, device="cuda", seed=0):
    """The whole op once, on random data of the entry's shape (the same for a seed), with one of its
    configs; returns its output."""
    from ..dtypes import torch_dtype
    from ..op.pbs_attention import pbs_attention
    dtype = torch_dtype(entry.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, entry.heads, seqlen, entry.head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, entry.kv_heads, seqlen, entry.head_dim, device=device, dtype=dtype, generator=gen)
    return pbs_attention(q, k, k, params, launch=launch_config)


def prewarm_length(params) -> int:
    """The short prompt the loader runs once per config at load time."""
    return 2 * params.segment_size


def warm_columns(entry, params, device="cuda"):
    """The column choice (op/columns.py: torch's gather, max and top-k) once at the entry's own
    length: torch loads a kernel on first use and picks top-k's by size, so the short prompt of the
    warm-up alone leaves a first long call to load them (H100: 55-61 ms instead of 15 at 32k)."""
    if not params.column_blocks or params.keeps_all:
        return
    from ..op.columns import column_mask
    n = entry.seqlen
    scores = torch.rand((1, entry.kv_heads, n), device=device)
    positions = torch.arange(n, device=device, dtype=torch.int32).expand(1, entry.kv_heads, n)
    column_mask(scores, positions, block_size=params.block_size, segment_size=params.segment_size,
                column_blocks=params.column_blocks, sink=torch.zeros((1, entry.kv_heads), dtype=torch.int32,
                                                                     device=device))


def run_select_buckets(entry, params, lengths: tuple, device="cuda", seed=None):
    """The selection kernel is specialised on the power-of-two block count: build every bucket
    from the loader's prewarm length up to the longest prompt this entry serves (`select_range`).
    Block logits are zeros, or random for a `seed`; returns each bucket's (count, full, index)."""
    shortest, longest = lengths
    from ..kernels.block_select import select_rows
    from ..op.selection import bisects
    bs = params.block_size
    nb = 1 << (-(-shortest // bs) - 1).bit_length()
    top = -(-longest // bs)
    group = entry.heads // entry.kv_heads  # one KV head: the kernel is not specialised on counts
    keep_all = params.keeps_all
    gen = torch.Generator(device=device).manual_seed(seed or 0)
    out = []
    while True:
        kb = torch.zeros((1, 1, nb), dtype=torch.int32, device=device)
        logits = None if keep_all else (torch.zeros((1, group, nb, nb), dtype=torch.float32, device=device)
                                        if seed is None else
                                        torch.randn((1, group, nb, nb), device=device, generator=gen))
        threshold = torch.full((group,), 1.0 if seed is None else 0.9, device=device)
        columns = (torch.zeros((1, 1, nb), dtype=torch.int8, device=device) if seed is None else
                   (torch.rand((1, 1, nb), device=device, generator=gen) < 0.05).to(torch.int8))
        out.append(select_rows(logits, kb, kb, kb[:, :, 0].contiguous(), columns, heads=group, seqlen=nb * bs,
                               block_size=bs, segment_size=params.segment_size, threshold=threshold,
                               bisect=bisects(nb), tail_blocks=params.tail_blocks))
        if nb >= top:
            break
        nb *= 2
    return out
