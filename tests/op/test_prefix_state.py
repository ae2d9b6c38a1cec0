"""Chunked prefill with a prefix state: each chunk scores and permutes only its own keys, and the
state it extends equals what recomputing the stages gives (interpreter, float32)."""
import math

import pytest
import torch

from pbs_tune import LaunchConfig, PbsParams, PrefixState, pbs_attention, pbs_attention_chunk
from pbs_tune.kernels.segment_sort import segment_permute
from pbs_tune.op.permutation import last_block_key_scores
from pbs_tune.op.selection import block_means, block_position_bounds
from helpers import causal_attention, random_qkv, rel_l2

BS, SEG, N = 32, 64, 200
# Chunk ends that split segments (64) and blocks (32): 70, 101, 161; one of a single query (161).
ENDS = (70, 101, 160, 161, N)
TILES = LaunchConfig(32, 32, 4, 1)  # the interpreter runs few, large programs faster than many small ones


def chunked(q, k, v, ends, state=None, **params):
    outs, start = [], 0
    for end in ends:
        out, state = pbs_attention_chunk(q[:, :, start:end], k[:, :, :end], v[:, :, :end], state=state,
                                         block_size=BS, segment_size=SEG, launch=TILES, **params)
        outs.append(out)
        start = end
    return torch.cat(outs, 2), state


@pytest.mark.parametrize("keep_keys", [False, True])
@pytest.mark.parametrize("permute", [True, False])
def test_threshold_one_is_dense_for_chunks_that_split_segments_and_blocks(keep_keys, permute):
    q, k, v = random_qkv(1, 2, 1, N, 64)
    out, state = chunked(q, k, v, ENDS, PrefixState(keep_keys=keep_keys), threshold=1.0, permute=permute)
    assert rel_l2(out, causal_attention(q, k, v, 1 / math.sqrt(64))) < 1e-5
    assert (state.length, state.done) == (N, 192)  # 3 segments of 64; 6 blocks of 32


def test_a_prompts_first_chunk_is_whole_prompt_pbs_to_the_bit():
    q, k, v = random_qkv(1, 4, 2, N, 64)
    params = PbsParams(BS, SEG, 0.7)
    out, state = pbs_attention_chunk(q, k, v, params, launch=TILES)
    assert torch.equal(out, pbs_attention(q, k, v, params, launch=TILES))
    # ... and a chunk after a prefix no state has seen re-permutes that prefix as pbs_attention does
    chunk, fresh = pbs_attention_chunk(q[:, :, 120:], k, v, params, launch=TILES)
    assert torch.equal(chunk, pbs_attention(q[:, :, 120:], k, v, params, launch=TILES))


def test_the_state_equals_the_stages_recomputed_chunk_by_chunk():
    """Completed segments keep the order their completing chunk's last query block gave them; the
    pooled keys and block bounds are those of the permuted keys; the tail stays in place."""
    q, k, v = random_qkv(1, 4, 2, N, 64)
    scale = 1 / math.sqrt(64)
    state, start, done = PrefixState(), 0, 0
    want = torch.arange(N, dtype=torch.int32).expand(1, 2, N).clone()
    for end in ENDS:
        _, state = pbs_attention_chunk(q[:, :, start:end], k[:, :, :end], v[:, :, :end], state=state,
                                       block_size=BS, segment_size=SEG, threshold=0.8, launch=TILES)
        if end - done >= SEG:  # recompute: the chunk scores the keys after the completed segments
            scores = last_block_key_scores(q[:, :, start:end], k[:, :, done:end], block_size=BS, scale=scale)
            _, _, pos = segment_permute(scores, k[:, :, done:end], v[:, :, done:end], segment_size=SEG)
            want[:, :, done:end] = pos + done
        done, start = end // SEG * SEG, end
        assert torch.equal(state.positions[:, :, :end], want[:, :, :end])
    pos = state.positions[:, :, :N]
    k_perm = torch.gather(k, 2, pos.long()[..., None].expand_as(k))
    assert torch.equal(state.pooled[:, :, :7], block_means(k_perm, BS))
    kmin, kmax = block_position_bounds(pos.contiguous(), BS)
    assert torch.equal(state.key_min[:, :, :7], kmin) and torch.equal(state.key_max[:, :, :7], kmax)
    assert torch.equal(pos[:, :, 192:], torch.arange(192, N, dtype=torch.int32).expand(1, 2, 8))


def test_held_keys_and_the_gathered_prefix_give_the_same_output():
    q, k, v = random_qkv(1, 2, 1, N, 64)
    index, _ = chunked(q, k, v, ENDS, PrefixState(), threshold=0.6)
    held, state = chunked(q, k, v, ENDS, PrefixState(keep_keys=True), threshold=0.6)
    assert torch.equal(index, held)
    assert torch.equal(state.k[:, :, :N], torch.gather(k, 2, state.positions[:, :, :N].long()[..., None]
                                                       .expand_as(k)))


def test_unpermuted_chunks_equal_pbs_attention_on_each_chunk():
    """Without a permutation the state only caches pooled keys: each chunk's output is the stateless op's."""
    q, k, v = random_qkv(1, 2, 1, N, 64)
    out, _ = chunked(q, k, v, ENDS, threshold=0.5, permute=False)
    start, want = 0, []
    for end in ENDS:
        want.append(pbs_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], block_size=BS,
                                  segment_size=SEG, threshold=0.5, permute=False, launch=TILES))
        start = end
    assert torch.equal(out, torch.cat(want, 2))


def test_a_state_never_crosses_the_sequences_of_a_batch():
    q, k, v = random_qkv(2, 2, 1, N, 64)
    both, state = chunked(q, k, v, ENDS, threshold=0.6)
    for b in range(2):
        alone, single = chunked(q[b:b + 1], k[b:b + 1], v[b:b + 1], ENDS, threshold=0.6)
        assert torch.allclose(both[b:b + 1], alone, atol=1e-6, rtol=0)
        assert torch.equal(state.positions[b:b + 1, :, :N], single.positions[:, :, :N])


def test_a_state_that_does_not_fit_the_chunk_is_one_clear_error():
    q, k, v = random_qkv(1, 2, 1, N, 64)
    _, state = pbs_attention_chunk(q[:, :, :100], k[:, :, :100], v[:, :, :100], block_size=BS, segment_size=SEG,
                                   threshold=0.9, launch=TILES)
    with pytest.raises(ValueError, match="holds 100 keys but this chunk's prefix has 120.*state=None"):
        pbs_attention_chunk(q[:, :, 120:], k, v, state=state, block_size=BS, segment_size=SEG, threshold=0.9)
    with pytest.raises(ValueError, match="segment 64.*parameters differ"):
        pbs_attention_chunk(q[:, :, 100:], k, v, state=state, block_size=BS, segment_size=128, threshold=0.9)
    with pytest.raises(TypeError, match="state must be a PrefixState"):
        pbs_attention_chunk(q, k, v, state={}, block_size=BS, segment_size=SEG, threshold=0.9)
    # the threshold may change between chunks
    out, state = pbs_attention_chunk(q[:, :, 100:], k, v, state=state, block_size=BS, segment_size=SEG,
                                     threshold=0.5, launch=TILES)
    assert state.length == N and out.shape == (1, 2, 100, 64)


@pytest.mark.parametrize("layout", ["cache", "view of a longer cache", "heads interleaved"])
def test_the_prefix_gather_copies_each_sequences_rows_in_the_stored_order(layout):
    from pbs_tune.op.prefix import _gather
    x = {"cache": torch.randn(2, 3, 40, 8), "view of a longer cache": torch.randn(2, 3, 60, 8)[:, :, 5:45],
         "heads interleaved": torch.randn(2, 40, 3, 8).transpose(1, 2)}[layout]  # the last: advanced indexing
    positions = torch.stack([torch.stack([torch.randperm(40) for _ in range(3)]) for _ in range(2)]).int()
    want = torch.gather(x, 2, positions.long()[..., None].expand(-1, -1, -1, 8))
    assert torch.equal(_gather(x, positions), want)
