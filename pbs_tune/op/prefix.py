"""Chunked prefill with prefix state: the prefix is scored and permuted once, not once per chunk.

A long prompt prefilled in chunks attends each chunk to its whole prefix. Without state every
chunk re-scores and re-permutes every completed segment of the prefix, so that stage grows with
the prefix on every chunk. `PrefixState` keeps, per sequence of a batch and KV head, what the
segments that are already complete need: each slot's original position (the permutation), the
mean of every key block (the selection's pooled keys) and each block's position range. A chunk
scores, permutes and pools only the keys after the last completed segment (its own keys, and the
tail of a segment the previous chunk left incomplete), with its own last query block as the
scorer; selection and attention then run over the whole prefix.

A completed segment keeps the order its completing chunk gave it. Whole-prompt PBS orders it by
the prompt's last query block instead, so a chunk's output differs from whole-prompt PBS by the
selection only: every kept block is exact, threshold 1 is dense attention, and the first chunk
of a prompt is whole-prompt PBS to the bit.

Keys and values: by default the state holds no copy of them; each chunk gathers the prefix into
the stored order from the caller's (cached) K and V, one pass over the prefix. `keep_keys=True`
holds the permuted keys and values instead (as much memory again as the prefix's K and V) and
saves that gather.
"""
from typing import Any

import torch

from ..kernels.segment_sort import segment_permute
from ..profile.launch import LaunchConfig
from ..profile.params import PbsParams
from .pbs_attention import attend_blocks, check_inputs, default_scale, refuse_grad
from .permutation import KeyPermutation, last_block_key_scores
from .selection import BlockList, block_means, block_position_bounds, select_blocks


class PrefixState:
    """What PBS keeps of one batch's prefix between chunks (one per attention layer), so that each chunk
    scores and permutes only its own keys. Buffers grow by half again when full: extending is amortised O(chunk).

    Args:
        keep_keys: also hold the permuted K and V (as much memory again as the prefix's K and V) instead of
            gathering them from the caller's K and V on every chunk.

    Attributes:
        length: keys seen (the prefix of the next chunk, N - M of it).
        done: keys in completed segments, whose order is final.
    """

    def __init__(self, keep_keys: bool = False):
        self.keep_keys = keep_keys
        self.length = 0
        self.done = 0
        self.params = None       # block_size, segment_size, permute, estimator it was built with
        self.shape = None        # (batch, kv heads, head_dim, dtype, device)
        self.positions = None    # (B, Hkv, cap) int32: original position of each slot
        self.pooled = None       # (B, Hkv, cap / block, D) float32: mean key of each block, permuted
        self.key_min = None      # (B, Hkv, cap / block) int32
        self.key_max = None
        self.k = self.v = None   # (B, Hkv, cap, D) permuted keys and values (keep_keys only)

    def mismatch(self, q: torch.Tensor, k: torch.Tensor, params: PbsParams) -> str | None:
        """Why this state cannot continue with these inputs, or None when it can."""
        if self.params is None:  # a new state starts on any prefix
            return None
        B, Hkv, N, D = k.shape
        if self.shape != (B, Hkv, D, k.dtype, k.device):
            return (f"the state holds batch {self.shape[0]}, {self.shape[1]} KV heads, head_dim {self.shape[2]}, "
                    f"{self.shape[3]} on {self.shape[4]}; k is {tuple(k.shape)} {k.dtype} on {k.device}")
        if self.params != _structure(params):
            return (f"the state was built with block {self.params[0]}, segment {self.params[1]}, permute "
                    f"{self.params[2]}, estimator {self.params[3]}; these parameters differ")
        if N - q.shape[2] != self.length:
            return (f"the state holds {self.length} keys but this chunk's prefix has {N - q.shape[2]} "
                    f"(keys {N} - queries {q.shape[2]})")
        return None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.positions, self.pooled, self.key_min,
                                                           self.key_max, self.k, self.v) if t is not None)

    def _reserve(self, k, block_size):
        """Room for k.shape[2] keys, keeping what is stored."""
        B, Hkv, N, D = k.shape
        cap = 0 if self.positions is None else self.positions.shape[-1]
        if N <= cap:
            return
        cap = max(N, cap + cap // 2)
        cap = -(-cap // block_size) * block_size
        nkb = cap // block_size

        def grown(old, shape, dtype):
            new = torch.empty(shape, dtype=dtype, device=k.device)
            if old is not None:
                new[:, :, :old.shape[2]] = old
            return new

        self.positions = grown(self.positions, (B, Hkv, cap), torch.int32)
        self.pooled = grown(self.pooled, (B, Hkv, nkb, D), torch.float32)
        self.key_min = grown(self.key_min, (B, Hkv, nkb), torch.int32)
        self.key_max = grown(self.key_max, (B, Hkv, nkb), torch.int32)
        if self.keep_keys and self.params[2]:
            self.k = grown(self.k, (B, Hkv, cap, D), k.dtype)
            self.v = grown(self.v, (B, Hkv, cap, D), k.dtype)


def _structure(params: PbsParams) -> tuple:
    """The parameters a state depends on (never the threshold: it can change between chunks)."""
    return (params.block_size, params.segment_size, params.permute, params.estimator)


def _gather(x, positions):
    """x (B, H, N, D) rows reordered per (batch, head) by positions (B, H, N): one pass over x, into
    a new contiguous tensor. Where every row is contiguous and rows of one (batch, head) follow each
    other (a cache, or a view of one), as whole rows of a 2-D view of its storage (`index_select`
    copies rows); otherwise by advanced indexing, element by element."""
    B, H, N, D = x.shape
    sb, sh, sn, sd = x.stride()
    if sd != 1 or sn != D or sh % D or sb % D:
        batch = torch.arange(B, device=x.device)[:, None, None]
        head = torch.arange(H, device=x.device)[None, :, None]
        return x[batch, head, positions.long()]
    first = (torch.arange(B, device=x.device)[:, None, None] * (sb // D)
             + torch.arange(H, device=x.device)[None, :, None] * (sh // D))
    rows = x.as_strided(((B - 1) * (sb // D) + (H - 1) * (sh // D) + N, D), (D, 1))
    return torch.index_select(rows, 0, (first + positions).reshape(-1)).view(B, H, N, D)


def extend(state: PrefixState, q, k, v, params: PbsParams, scale):
    """Score, permute and pool the keys after the state's completed segments; returns the permuted
    (k, v, positions) of all N keys for selection and attention, records the new keys, and the
    scores of all N keys when this chunk's own scoring covered them (the first chunk), else None."""
    B, Hkv, N, D = k.shape
    bs, seg = params.block_size, params.segment_size
    if state.params is None:
        state.params, state.shape = _structure(params), (B, Hkv, D, k.dtype, k.device)
    state._reserve(k, bs)
    old = state.done
    done = (N // seg) * seg if params.permute else N - N % bs
    pos = state.positions
    scores = None
    if params.permute and N - old >= seg:
        ks, vs = k[:, :, old:], v[:, :, old:]
        scores = last_block_key_scores(q, ks, block_size=bs, scale=scale)
        k_new, v_new, p_new = segment_permute(scores, ks, vs, segment_size=seg)
        pos[:, :, old:N] = p_new + old
    else:  # nothing new completes a segment: the new keys stay in place
        k_new, v_new = k[:, :, old:], v[:, :, old:]
        pos[:, :, old:N] = torch.arange(old, N, device=k.device, dtype=torch.int32)
    if state.keep_keys and params.permute:
        state.k[:, :, old:N], state.v[:, :, old:N] = k_new, v_new
        k_perm, v_perm = state.k[:, :, :N], state.v[:, :, :N]
    elif old == 0:
        k_perm, v_perm = k_new, v_new
    elif not params.permute:
        k_perm, v_perm = k, v
    else:
        k_perm, v_perm = _gather(k, pos[:, :, :N]), _gather(v, pos[:, :, :N])
    first_block = old // bs
    state.pooled[:, :, first_block:-(-N // bs)] = block_means(k_perm[:, :, old:], bs)
    kmin, kmax = block_position_bounds(pos[:, :, old:N].contiguous(), bs)
    state.key_min[:, :, first_block:first_block + kmin.shape[-1]] = kmin
    state.key_max[:, :, first_block:first_block + kmax.shape[-1]] = kmax
    state.done, state.length = done, N
    return k_perm, v_perm, pos[:, :, :N], (scores if old == 0 else None)


def select(state: PrefixState, q, k, k_perm, positions, params: PbsParams, scale, key_mass=None):
    """Selection over all N keys, from the pooled keys and block bounds the state holds. The columns
    follow this chunk's last query block over every key: `key_mass` where the chunk scored them all,
    else scored from `k` (original order) by selection."""
    nb = -(-k_perm.shape[2] // params.block_size)
    return select_blocks(q, k_perm, positions, block_size=params.block_size, segment_size=params.segment_size,
                         threshold=params.threshold, scale=scale, estimator=params.estimator,
                         pooled_k=state.pooled[:, :, :nb],
                         bounds=(state.key_min[:, :, :nb].contiguous(), state.key_max[:, :, :nb].contiguous()),
                         tail_blocks=params.tail_blocks, column_blocks=params.column_blocks, k=k, key_mass=key_mass)


def pbs_attention_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: PbsParams | None = None, *,
                        state: PrefixState | None = None, launch: LaunchConfig | None = None,
                        scale: float | None = None, return_blocks: bool = False, out: torch.Tensor | None = None,
                        **keywords: Any) -> (tuple[torch.Tensor, PrefixState]
                                             | tuple[torch.Tensor, BlockList, PrefixState]):
    """One chunk of a chunked causal prefill, the prefix's permutation kept in `state` between chunks.

    Args:
        q: (B, Hq, M, D), the chunk's queries: the last M of the N key positions; dtypes and D as `pbs_attention`.
        k: (B, Hkv, N, D) keys of the whole prefix and the chunk (the cache), original order, Hq % Hkv == 0.
        v: (B, Hkv, N, D) values, as k.
        params: one `PbsParams` (None: its fields as keywords); only the threshold may change between chunks.
        state: None for a prompt's first chunk (or to start over: this chunk scores and permutes the whole
            prefix), else the state the previous chunk of these sequences returned; extended in place.
        launch: tiles and kernel (`LaunchConfig`); None: the default for this GPU.
        scale: softmax scale; None: 1 / sqrt(D).
        return_blocks: also return this chunk's `BlockList`.
        out: a (B, Hq, M, D) tensor (or view) to write into; None: a new one like q.
        **keywords: PbsParams' fields in place of params, as `pbs_attention` takes them.

    Returns:
        (out (B, Hq, M, D), state), or (out, BlockList, state) with return_blocks; pass state with the next chunk.
    """
    params = check_inputs(q, k, v, params, launch=launch, **keywords)
    refuse_grad("pbs_attention_chunk", q, k, v)
    if state is None:
        state = PrefixState()
    elif not isinstance(state, PrefixState):
        raise TypeError(f"state must be a PrefixState or None, got {type(state).__name__}")
    else:
        reason = state.mismatch(q, k, params)
        if reason:
            raise ValueError(f"{reason}: pass the state the previous chunk of these sequences returned, "
                             f"or state=None to start over")
    scale = default_scale(q, scale)
    with torch.no_grad():
        k_perm, v_perm, positions, key_mass = extend(state, q, k, v, params, scale)
        blocks = select(state, q, k, k_perm, positions, params, scale, key_mass)
        out = attend_blocks(q, KeyPermutation(k_perm, v_perm, positions), blocks, launch=launch, scale=scale,
                            out=out)
    return (out, blocks, state) if return_blocks else (out, state)
