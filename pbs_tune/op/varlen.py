"""PBS prefill over a packed batch (FlashAttention's varlen layout): sequences of unequal length
concatenated along tokens, each permuted, selected and attended on its own.

Each sequence runs the op on views of the packed tensors (no copy of Q, no padding) and writes
into its rows of one packed output. The loop over sequences is on the host: per sequence it costs
the op's launches, which the GPU hides at prefill lengths (H200, 4 prompts of 16k-64k: 1.01x the
sum of single-sequence runs; benchmarks/README.md, "Serving traffic").
"""
from typing import Any

import torch

from ..profile.launch import LaunchConfig
from ..profile.params import PbsParams
from .pbs_attention import as_params, pbs_attention
from .selection import BlockList


def check_cu_seqlens(cu_q, cu_k, total_q, total_k, max_q, max_k, device):
    """The per-sequence lengths ([(q_len, k_len), ...]) of valid cu_seqlens, else one clear error."""
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype != torch.int32:
            raise TypeError(f"{name} must be a 1-D torch.int32 tensor of sequence starts (batch + 1 values), got "
                            + (f"{cu.dtype} of shape {tuple(cu.shape)}" if isinstance(cu, torch.Tensor)
                               else type(cu).__name__))
        if cu.device != device and cu.device.type != "cpu":
            raise ValueError(f"{name} is on {cu.device} and q on {device}: put them on q's device or the CPU")
    if cu_q.numel() != cu_k.numel() or cu_q.numel() < 2:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both hold batch + 1 >= 2 values, got "
                         f"{cu_q.numel()} and {cu_k.numel()}")
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for name, starts, total in (("cu_seqlens_q", starts_q, total_q), ("cu_seqlens_k", starts_k, total_k)):
        if starts[0] != 0 or any(b < a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"{name} must start at 0 and never decrease, got {starts}")
        if starts[-1] != total:
            raise ValueError(f"{name} ends at {starts[-1]} but the packed tensor has {total} tokens")
    lengths = [(starts_q[i + 1] - starts_q[i], starts_k[i + 1] - starts_k[i]) for i in range(len(starts_q) - 1)]
    for i, (n_q, n_k) in enumerate(lengths):
        if n_q > n_k:
            raise ValueError(f"sequence {i} has {n_q} queries but {n_k} keys: queries are the last positions of "
                             f"their keys, so each sequence needs k_len >= q_len")
    if max(n for n, _ in lengths) > max_q or max(n for _, n in lengths) > max_k:
        raise ValueError(f"max_seqlen_q={max_q} / max_seqlen_k={max_k} are below the longest sequence "
                         f"({max(n for n, _ in lengths)} / {max(n for _, n in lengths)})")
    return starts_q, starts_k, lengths


def sequence_view(x, start, end):
    """Rows start:end of a packed (tokens, heads, D) tensor as a (1, heads, n, D) view."""
    return x[start:end].transpose(0, 1).unsqueeze(0)


def pbs_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                         params: PbsParams | None = None, *, launch: LaunchConfig | None = None,
                         scale: float | None = None, return_blocks: bool = False,
                         **keywords: Any) -> torch.Tensor | tuple[torch.Tensor, list[BlockList]]:
    """Causal PBS-Attn prefill over packed sequences of unequal length; no sequence reads another's keys.

    Args:
        q: (total_q, Hq, D), the sequences' queries one after another; dtypes and D as `pbs_attention`.
        k: (total_k, Hkv, D), the sequences' keys one after another; sequence i's q_len queries are the last
            q_len of its k_len >= q_len keys (q_len < k_len: a chunk after a cached prefix).
        v: (total_k, Hkv, D) values, as k.
        cu_seqlens_q: (batch + 1,) int32 starts of the sequences in q, 0 .. total_q; on q's device or the
            CPU (no device synchronisation; the lengths are read on the host either way).
        cu_seqlens_k: (batch + 1,) int32 starts of the sequences in k and v, 0 .. total_k.
        max_seqlen_q: at least the longest sequence's q_len (checked).
        max_seqlen_k: at least the longest sequence's k_len (checked).
        params: one `PbsParams`; None: its fields as keywords.
        launch: tiles and kernel (`LaunchConfig`); None: the default for this GPU.
        scale: softmax scale; None: 1 / sqrt(D).
        return_blocks: also return the `BlockList` of every sequence that has queries.
        **keywords: PbsParams' fields in place of params, as `pbs_attention` takes them.

    Returns:
        (total_q, Hq, D) like q; with return_blocks, (out, [BlockList, ...]).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a packed (total_tokens, heads, head_dim) tensor, got "
                             + (f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("pbs_attention_varlen is forward-only (prefill inference): call it under "
                         "torch.no_grad() or torch.inference_mode(), or detach the inputs")
    params = as_params(params, **keywords)
    starts_q, starts_k, lengths = check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0],
                                                   max_seqlen_q, max_seqlen_k, q.device)
    out = torch.empty_like(q)
    all_blocks = []
    with torch.no_grad():
        for i, (n_q, n_k) in enumerate(lengths):
            if n_q == 0:
                continue
            qs = sequence_view(q, starts_q[i], starts_q[i + 1])
            ks, vs = (sequence_view(t, starts_k[i], starts_k[i + 1]) for t in (k, v))
            _, blocks = pbs_attention(qs, ks, vs, params, launch=launch, scale=scale, return_blocks=True,
                                      out=sequence_view(out, starts_q[i], starts_q[i + 1]))
            if return_blocks:  # otherwise each sequence's index list is freed as the loop goes on
                all_blocks.append(blocks)
    return (out, all_blocks) if return_blocks else out
