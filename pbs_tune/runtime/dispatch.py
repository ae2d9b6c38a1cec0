"""Which entry and config a call runs (a `Choice`: PBS with its config, or SDPA with the reason), and running it.

Prefill whose keys (cached prefix + chunk) reach the profile's smallest tuned length runs PBS
with the entry tuned for the largest length <= the keys, for the model's shape or the nearest
tuned one (same head_dim and dtype, closest GQA ratio; said once). Padded batches run PBS per
sequence on its unpadded rows; chunked prefill runs the chunk's queries against the whole
prefix, keeping the prefix's permutation beside the model's cache (prefix_cache.py) so that each
chunk scores and permutes only its own keys; whether a chunk runs PBS is the entry's measured
crossover (chunk size by prefix length). Everything PBS cannot do exactly (decode steps, masks
other than contiguous padding, dropout, non-causal modules, autograd, other dtypes, shapes with no
entry of their head_dim) falls back to SDPA and is counted in `stats()`.
"""
import logging
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dtypes import name_of
from ..op.pbs_attention import pbs_attention
from ..op.prefix import PrefixState, pbs_attention_chunk
from ..profile import profiles
from ..profile.launch import LaunchConfig
from ..profile.params import PbsParams
from ..profile.target import CPU
from .loader import load_profile, ready
from .state import STATE

logger = logging.getLogger("pbs_tune")


def shortest_pbs_length(prof) -> int | None:
    """The fewest keys (prefix + chunk) PBS runs at with this profile: its smallest entry's length,
    at least profiles.UNTUNED_MIN_SEQLEN for entries not tuned on their GPU; None without entries."""
    entries = prof.for_gpu(prof.gpu)
    if not entries:
        return None
    smallest = min(e.seqlen for e in entries)
    return max(smallest, profiles.UNTUNED_MIN_SEQLEN) if any(e.not_tuned for e in entries) else smallest


class Settings:
    """What one applied model needs at each attention call. `min_chunk`: None to follow each entry's
    measured chunk crossover (profiles.ProfileEntry.min_chunk_at), or the fewest chunk queries for
    PBS everywhere."""

    def __init__(self, prof, min_seqlen, min_chunk=None, cuda_graphs=True, prefix_keys=False):
        self.profile = prof
        self.prefix_keys = prefix_keys
        self.gpu = prof.gpu
        self.min_seqlen = min_seqlen
        self.min_chunk = min_chunk
        self.graphs = STATE.graphs if cuda_graphs and os.environ.get("PBS_TUNE_CUDA_GRAPHS", "1") != "0" else None


def fallback_reason(settings, q, k, attention_mask, dropout, kwargs, causal=True):
    """Why the whole call runs SDPA, or None. Padding masks are handled per sequence (_run)."""
    n = q.shape[2]
    if not causal:
        return "non_causal"
    if n == 1:
        return "decode"
    if n < k.shape[2] and settings.min_chunk is not None and n < settings.min_chunk:
        return "short_chunk"
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape != (q.shape[0], k.shape[2])):
        return "mask"
    if dropout:
        return "dropout"
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        return "unsupported_kwargs"
    if q.device.type != ("cpu" if settings.gpu == CPU else "cuda"):
        return "device"
    if name_of(q.dtype) is None:
        return "dtype"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return "grad"  # PBS is forward-only (prefill inference)
    if k.shape[2] < settings.min_seqlen:
        return "short"
    return None


def _pick(settings, q, k, seqlen):
    return settings.profile.pick(seqlen, gpu=settings.gpu, heads=q.shape[1], kv_heads=k.shape[1],
                                 head_dim=q.shape[3], dtype=name_of(q.dtype), nearest=True)


@dataclass(frozen=True)
class Choice:
    """What one call (or one sequence of a padded batch) runs: PBS with `params` and `launch`, or, when
    `fallback` names why, dense SDPA."""

    params: PbsParams | None = None
    launch: LaunchConfig | None = None
    fallback: str | None = None


def choose(settings, q, k, layer_idx) -> Choice:
    """The entry's config for keys of this length and this layer, or the reason to run SDPA."""
    if k.shape[2] < settings.min_seqlen:
        return Choice(fallback="short")
    entry = _pick(settings, q, k, k.shape[2])
    if entry is None:
        return Choice(fallback="untuned_shape")
    if entry.dense_faster:
        return Choice(fallback="dense_faster")
    m, prefix = q.shape[2], k.shape[2] - q.shape[2]
    if prefix and settings.min_chunk is None and m < entry.min_chunk_at(prefix):
        return Choice(fallback="short_chunk")
    config = entry.config_for_layer(layer_idx)
    return Choice(*config) if config is not None else Choice(fallback="dense_layer")


def _pbs(q, k, v, choice: Choice, scale, out=None, prefix=None, key=None, graphs=None, keep_keys=False):
    """The op; with `prefix` (the cache and the states taken from beside it), as a chunk that extends
    its prefix state and puts it back, except where a CUDA graph serves the call (short calls, whose
    prefix costs little to permute)."""
    params, launch = choice.params, choice.launch
    out_graph = graphs.run(q, k, v, params, launch, scale) if graphs is not None and out is None else None
    if out_graph is not None:
        return out_graph
    if prefix is None:
        return pbs_attention(q, k, v, params, launch=launch, scale=scale, out=out)
    cache, held = prefix
    state = held.get(key)
    if state is None or state.mismatch(q, k, params) is not None:
        state = PrefixState(keep_keys)  # none yet, or another prefix (or shape): this chunk starts one
    out, state = pbs_attention_chunk(q, k, v, params, state=state, launch=launch, scale=scale, out=out)
    STATE.prefixes.put(cache, key, state)
    return out


def run(settings, q, k, v, scale, layer_idx, padding=None, prefix=None) -> torch.Tensor | None:
    """PBS output (B, H, M, D), or None where the caller runs SDPA instead; counts which ran.
    `padding` (B, N) bool marks real tokens: each sequence then runs on its own rows. `prefix`:
    (the transformers cache holding these keys, the layer's prefix states taken from beside it)."""
    if padding is not None:
        return _run_padded(settings, q, k, v, scale, layer_idx, padding, prefix)
    choice = choose(settings, q, k, layer_idx)
    if choice.fallback:
        STATE.count(f"fallback:{choice.fallback}")
        logger.debug("pbs_tune: %s at %d keys falls back to SDPA (%s)", tuple(q.shape), k.shape[2], choice.fallback)
        return None
    STATE.count("pbs")
    return _pbs(q, k, v, choice, scale, prefix=prefix, key=(layer_idx, None), graphs=settings.graphs,
                keep_keys=settings.prefix_keys)


def _run_padded(settings, q, k, v, scale, layer_idx, padding, prefix=None):
    """A padded batch: per sequence, PBS (or dense SDPA) over its real tokens only, zeros on the
    padded query rows, each row with its own prefix state. Counted once per sequence. Padding
    must be contiguous (left or right)."""
    spans = padded_spans(padding)
    if spans is None:
        STATE.count("fallback:mask")
        return None
    B, H, M, D = q.shape
    offset = k.shape[2] - M
    out = q.new_zeros(B, H, M, D)
    for b, (start, end) in enumerate(spans):
        first_query = max(start, offset)
        if end <= first_query:
            continue  # this sequence has no real query rows in the chunk
        qs = q[b:b + 1, :, first_query - offset:end - offset]
        ks, vs = k[b:b + 1, :, start:end], v[b:b + 1, :, start:end]
        rows = out[b:b + 1, :, first_query - offset:end - offset]
        choice = choose(settings, qs, ks, layer_idx)
        if choice.fallback:
            STATE.count(f"fallback:{choice.fallback}")
            rows.copy_(dense_causal(qs, ks, vs, scale))
        else:
            STATE.count("pbs")
            _pbs(qs, ks, vs, choice, scale, out=rows, prefix=prefix, key=(layer_idx, b, start),
                 keep_keys=settings.prefix_keys)
    return out


def padded_spans(padding):
    """[(start, end), ...] of each row's real tokens, or None if some row's are not contiguous.
    Every layer of one forward gets the same mask object, so it is read on the host once per
    forward (one device sync), not once per layer; a different or modified mask is read anew."""
    ref, version, spans = STATE.last_spans
    if ref() is padding and version == padding._version:
        return spans
    real = padding.bool()
    counts = real.sum(-1)
    starts = real.to(torch.int8).argmax(-1)
    idx = torch.arange(real.shape[-1], device=real.device)
    inside = (idx >= starts[:, None]) & (idx < (starts + counts)[:, None])
    spans = [(s, s + c) for s, c in zip(starts.tolist(), counts.tolist())] if torch.equal(inside, real) else None
    STATE.last_spans = (weakref.ref(padding), padding._version, spans)
    return spans


def dense_causal(q, k, v, scale):
    """SDPA for queries that are the last positions of their keys (any q/k lengths)."""
    M, N = q.shape[2], k.shape[2]
    mask = None if M == N else torch.ones(M, N, dtype=torch.bool, device=q.device).tril(N - M)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def tuned_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, profile: profiles.Profile | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """Causal prefill by the tuned entry for this length, without transformers; SDPA where PBS does not apply.

    Which of the two ran (and why SDPA did) is counted in `stats()`.

    Args:
        q: (B, Hq, M, D), the last M <= N key positions (M < N: a chunk after its cached prefix).
        k: (B, Hkv, N, D) keys of the whole prompt, Hq % Hkv == 0.
        v: (B, Hkv, N, D) values.
        profile: a tuned `Profile` (load_profile()); None: this GPU's, loaded once per process.
        scale: softmax scale; None: 1 / sqrt(D).

    Returns:
        (B, Hq, M, D) in q's dtype.
    """
    if profile is None:
        STATE.default_profile = STATE.default_profile or load_profile()
    prof = ready(profile if profile is not None else STATE.default_profile)
    shortest = shortest_pbs_length(prof)
    settings = Settings(prof, shortest if shortest is not None else float("inf"))

    reason = fallback_reason(settings, q, k, None, 0.0, {})
    if reason is not None:
        STATE.count(f"fallback:{reason}")
        return dense_causal(q, k, v, scale)
    out = run(settings, q, k, v, scale, None)
    return out if out is not None else dense_causal(q, k, v, scale)
