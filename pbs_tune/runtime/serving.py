"""The serving path as one object: `PbsServing` holds what one tuned model needs at each attention
call, plans a call's `Choice` once per shape (entry_choice.py) and runs it, PBS or SDPA.

Plan once, run many: the choice depends only on the call's shape, its keys' and queries' counts
and the layer, so it is worked out once per such key and then looked up. A call always returns
the attention output: where PBS does not apply, the caller's dense attention runs (transformers'
own SDPA inside a model), counted by reason in `stats()`. Padded batches run PBS per sequence on
its unpadded rows; chunked prefill runs the chunk's queries against the whole prefix, keeping the
prefix's permutation beside the model's cache (prefix_cache.py) so that each chunk scores and
permutes only its own keys.
"""
import logging
import os
import weakref
from typing import Callable

import torch
import torch.nn.functional as F

from ..dtypes import name_of
from ..op.pbs_attention import pbs_attention
from ..op.prefix import PrefixState, pbs_attention_chunk
from ..profile import profiles
from .entry_choice import Choice, call_fallback, choose, shortest_pbs_length
from .loader import load_profile, ready
from .prefix_cache import PrefixStates
from .state import STATE

logger = logging.getLogger("pbs_tune")
MAX_PLANS = 4096  # choices kept per model (shape x queries x keys x layer)
MAX_SERVINGS = 4  # profiles tuned_attention keeps a PbsServing for


class PbsServing:
    """What one applied model (or `tuned_attention` with one profile) holds between calls.

    Args:
        profile: a profile ready for this process (loader.ready).
        min_seqlen: fewest keys (prefix + chunk) for PBS; None, or fewer: the profile's smallest tuned length.
        min_chunk: fewest queries of a chunk after a cached prefix for PBS; None: each entry's measured crossover.
        cuda_graphs: replay short calls from a CUDA graph per shape (graphs.py); PBS_TUNE_CUDA_GRAPHS=0: never.
        prefix_keys: chunks hold their prefix's permuted K and V (PrefixState(keep_keys=True)).
    """

    def __init__(self, profile: profiles.Profile, min_seqlen: int | None = None, min_chunk: int | None = None,
                 cuda_graphs: bool = True, prefix_keys: bool = False):
        shortest = shortest_pbs_length(profile)
        self.profile = profile
        self.min_seqlen = max(shortest, min_seqlen or 0) if shortest is not None else float("inf")
        self.min_chunk = min_chunk
        self.prefix_keys = prefix_keys
        graphs_on = cuda_graphs and os.environ.get("PBS_TUNE_CUDA_GRAPHS", "1") != "0"
        self.graphs = STATE.graphs if graphs_on else None  # shared by every layer and model
        self.prefixes = PrefixStates()  # chunked prefill: the prefix states beside each live cache
        self._choices = {}  # (heads, kv_heads, head_dim, torch dtype, queries, keys, layer) -> Choice
        self._last_spans = (lambda: None, None, None)  # (weak ref to a padding mask, its version, its spans)

    def call_fallback(self, q, k, attention_mask=None, dropout=0.0, kwargs=None, causal=True) -> str | None:
        """Why this whole call runs SDPA (entry_choice.call_fallback), or None."""
        return call_fallback(q, k, gpu=self.profile.gpu, min_seqlen=self.min_seqlen, min_chunk=self.min_chunk,
                             attention_mask=attention_mask, dropout=dropout, kwargs=kwargs, causal=causal)

    def plan(self, q, k, layer_idx) -> Choice:
        """The `Choice` for queries q (B, Hq, M, D) against keys k (B, Hkv, N, D) on this layer."""
        key = (q.shape[1], k.shape[1], q.shape[3], q.dtype, q.shape[2], k.shape[2], layer_idx)
        choice = self._choices.get(key)
        if choice is None:
            if len(self._choices) >= MAX_PLANS:
                self._choices.clear()  # a server's many prompt lengths: plan them again, bounded
            choice = self._choices[key] = choose(
                self.profile, heads=key[0], kv_heads=key[1], head_dim=key[2], dtype=name_of(key[3]), queries=key[4],
                keys=key[5], layer_idx=layer_idx, min_seqlen=self.min_seqlen, min_chunk=self.min_chunk)
        return choice

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dense: Callable[[], torch.Tensor],
            scale: float | None = None, layer_idx: int | None = None, padding: torch.Tensor | None = None,
            cache=None, held: dict | None = None, attention_mask: torch.Tensor | None = None,
            dropout: float = 0.0, kwargs: dict | None = None, causal: bool = True) -> torch.Tensor:
        """Attention output (B, Hq, M, D): PBS by the planned choice, else `dense()` (the caller's SDPA,
        same shape) where the whole call cannot run PBS (`call_fallback`) or the plan says so; counts which ran.

        Args:
            q: (B, Hq, M, D), the last M <= N key positions.
            k, v: (B, Hkv, N, D).
            dense: the whole call's dense attention, run where PBS does not apply.
            scale: softmax scale; None: 1 / sqrt(D).
            layer_idx: the model's layer (per-layer plans), or None.
            padding: (B, N) bool marking real tokens: each sequence then runs on its own rows.
            cache: the transformers cache holding these keys (chunked prefill), or None;
            held: this layer's prefix states taken from beside it (take_layer).
            attention_mask, dropout, kwargs, causal: the caller's attention arguments, which decide whether
                the whole call can run PBS (a 2-D padding mask can; see entry_choice.call_fallback).
        """
        reason = self.call_fallback(q, k, attention_mask, dropout, kwargs, causal)
        if reason is not None:
            STATE.count(f"fallback:{reason}")
            logger.debug("pbs_tune: layer %s falls back to SDPA (%s)", layer_idx, reason)
            return dense()
        prefix = (cache, held if held is not None else {}) if cache is not None else None
        if padding is not None:
            out = self._run_padded(q, k, v, scale, layer_idx, padding, prefix)
            return out if out is not None else dense()
        choice = self.plan(q, k, layer_idx)
        if choice.fallback:
            STATE.count(f"fallback:{choice.fallback}")
            logger.debug("pbs_tune: %s at %d keys falls back to SDPA (%s)", tuple(q.shape), k.shape[2],
                         choice.fallback)
            return dense()
        STATE.count("pbs")
        return self._pbs(q, k, v, choice, scale, prefix=prefix, key=(layer_idx, None), graphs=self.graphs)

    def _pbs(self, q, k, v, choice: Choice, scale, out=None, prefix=None, key=None, graphs=None):
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
            state = PrefixState(self.prefix_keys)  # none yet, or another prefix (or shape): this chunk starts one
        out, state = pbs_attention_chunk(q, k, v, params, state=state, launch=launch, scale=scale, out=out)
        self.prefixes.put(cache, key, state)
        return out

    def _run_padded(self, q, k, v, scale, layer_idx, padding, prefix=None):
        """A padded batch: per sequence, PBS (or dense SDPA) over its real tokens only, zeros on the
        padded query rows, each row with its own prefix state. Counted once per sequence. Padding
        must be contiguous (left or right); None (the caller's SDPA runs) where it is not."""
        spans = self.padded_spans(padding)
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
            choice = self.plan(qs, ks, layer_idx)
            if choice.fallback:
                STATE.count(f"fallback:{choice.fallback}")
                rows.copy_(dense_causal(qs, ks, vs, scale))
            else:
                STATE.count("pbs")
                self._pbs(qs, ks, vs, choice, scale, out=rows, prefix=prefix, key=(layer_idx, b, start))
        return out

    def padded_spans(self, padding):
        """[(start, end), ...] of each row's real tokens, or None if some row's are not contiguous.
        Every layer of one forward gets the same mask object, so it is read on the host once per
        forward (one device sync), not once per layer; a different or modified mask is read anew."""
        ref, version, spans = self._last_spans
        if ref() is padding and version == padding._version:
            return spans
        real = padding.bool()
        counts = real.sum(-1)
        starts = real.to(torch.int8).argmax(-1)
        idx = torch.arange(real.shape[-1], device=real.device)
        inside = (idx >= starts[:, None]) & (idx < (starts + counts)[:, None])
        spans = [(s, s + c) for s, c in zip(starts.tolist(), counts.tolist())] if torch.equal(inside, real) else None
        self._last_spans = (weakref.ref(padding), padding._version, spans)
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
    serving = _serving_of(profile if profile is not None else STATE.default_profile)
    return serving.run(q, k, v, scale=scale, dense=lambda: dense_causal(q, k, v, scale))


def _serving_of(prof) -> PbsServing:
    """The PbsServing of a profile (its plans kept between calls; the profile checked and bound once,
    when it is made), for the last MAX_SERVINGS profiles made: a server that reloads its profile does not
    keep every earlier one alive."""
    ref, serving = STATE.servings.get(id(prof), (None, None))
    if ref is None or ref() is not prof:
        serving = PbsServing(ready(prof))
        STATE.servings.pop(id(prof), None)
        STATE.servings[id(prof)] = (weakref.ref(prof), serving)
        while len(STATE.servings) > MAX_SERVINGS:
            STATE.servings.pop(next(iter(STATE.servings)))  # the oldest
    return serving
