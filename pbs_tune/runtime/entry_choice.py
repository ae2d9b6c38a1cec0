"""Which entry of a profile a call runs, or why it runs SDPA: one `Choice` per call.

Prefill whose keys (cached prefix + chunk) reach the profile's smallest tuned length runs PBS
with the entry tuned for the largest length <= the keys, for the model's shape or the nearest
tuned one (same head_dim and dtype, closest GQA ratio; said once). Whether a chunk after a cached
prefix runs PBS is the entry's measured crossover (chunk size by prefix length). Everything PBS
cannot do exactly (decode steps, masks other than contiguous padding, dropout, non-causal
modules, autograd, other dtypes, shapes with no entry of their head_dim) is a fallback with its
reason, counted in `stats()`.
"""
from dataclasses import dataclass

import torch

from ..dtypes import name_of
from ..profile import profiles
from ..profile.launch import LaunchConfig
from ..profile.params import PbsParams
from ..profile.target import CPU


@dataclass(frozen=True)
class Choice:
    """What one call (or one sequence of a padded batch) runs: PBS with `params` and `launch`, or, when
    `fallback` names why, dense SDPA."""

    params: PbsParams | None = None
    launch: LaunchConfig | None = None
    fallback: str | None = None


def shortest_pbs_length(prof: profiles.Profile) -> int | None:
    """The fewest keys (prefix + chunk) PBS runs at with this profile: its smallest entry's length,
    at least profiles.UNTUNED_MIN_SEQLEN for entries not tuned on their GPU; None without entries."""
    entries = prof.for_gpu(prof.gpu)
    if not entries:
        return None
    smallest = min(e.seqlen for e in entries)
    return max(smallest, profiles.UNTUNED_MIN_SEQLEN) if any(e.not_tuned for e in entries) else smallest


def call_fallback(q, k, *, gpu, min_seqlen, min_chunk, attention_mask=None, dropout=0.0, kwargs=None,
                  causal=True) -> str | None:
    """Why the whole call runs SDPA whatever the profile holds, or None. Padding masks (2-D, one
    row per sequence) are PBS's: each sequence runs on its own rows."""
    n = q.shape[2]
    kwargs = kwargs or {}
    if not causal:
        return "non_causal"
    if n == 1:
        return "decode"
    if n < k.shape[2] and min_chunk is not None and n < min_chunk:
        return "short_chunk"
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape != (q.shape[0], k.shape[2])):
        return "mask"
    if dropout:
        return "dropout"
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        return "unsupported_kwargs"
    if q.device.type != ("cpu" if gpu == CPU else "cuda"):
        return "device"
    if name_of(q.dtype) is None:
        return "dtype"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return "grad"  # PBS is forward-only (prefill inference)
    if k.shape[2] < min_seqlen:
        return "short"
    return None


def choose(prof: profiles.Profile, *, heads, kv_heads, head_dim, dtype, queries, keys, layer_idx, min_seqlen,
           min_chunk) -> Choice:
    """The entry's config for `keys` keys (the last `queries` of them asking) on this layer, or the
    reason to run SDPA. `min_chunk` None: each entry's measured chunk crossover decides."""
    if keys < min_seqlen:
        return Choice(fallback="short")
    entry = prof.pick(keys, gpu=prof.gpu, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                      nearest=True)
    if entry is None:
        return Choice(fallback="untuned_shape")
    if entry.dense_faster:
        return Choice(fallback="dense_faster")
    prefix = keys - queries
    if prefix and min_chunk is None and queries < entry.min_chunk_at(prefix):
        return Choice(fallback="short_chunk")
    config = entry.config_for_layer(layer_idx)
    return Choice(*config) if config is not None else Choice(fallback="dense_layer")
