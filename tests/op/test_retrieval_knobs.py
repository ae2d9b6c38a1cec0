"""The retrieval knobs (PbsParams.tail_blocks, column_blocks): the question's rows exact, the last
query block's heaviest keys kept by every query block (interpreter, float32, float64 references)."""
import math

import pytest
import torch

from pbs_tune import LaunchConfig, PbsParams, pbs_attention, pbs_attention_chunk, permute_and_select
from pbs_tune.op.columns import column_mask
from pbs_tune.op.permutation import last_block_key_scores
from helpers import causal_attention, random_qkv, reference_for, rel_l2

BS, SEG, N = 16, 32, 200
TILES = LaunchConfig(16, 16, 4, 1)
SCALE = 1 / math.sqrt(64)


def _params(threshold, **knobs):
    return PbsParams(BS, SEG, threshold, **knobs)


@pytest.mark.parametrize("permute", [True, False])
def test_threshold_one_with_both_knobs_is_dense_attention(permute):
    q, k, v = random_qkv(1, 4, 2, N, 64)
    out = pbs_attention(q, k, v, _params(1.0, tail_blocks=2, column_blocks=3, permute=permute), launch=TILES)
    assert rel_l2(out, causal_attention(q, k, v, SCALE)) < 1e-5


@pytest.mark.parametrize("tail", [1, 3])
def test_the_tail_rows_equal_dense_attention_at_any_threshold(tail):
    q, k, v = random_qkv(1, 4, 2, N, 64)
    q = q * 3  # peaked attention: a low threshold drops blocks
    out, blocks = pbs_attention(q, k, v, _params(0.3, tail_blocks=tail, column_blocks=0), launch=TILES,
                                return_blocks=True)
    dense = causal_attention(q, k, v, SCALE)
    rows = N - ((N - 1) // BS + 1 - tail) * BS  # the last `tail` blocks' rows (the last block is short)
    assert rel_l2(out[:, :, -rows:], dense[:, :, -rows:]) < 1e-5
    assert rel_l2(out[:, :, :-rows], dense[:, :, :-rows]) > 1e-3, "the other rows stay sparse"
    _, every = permute_and_select(q, k, v, _params(1.0))   # the same permutation, every causal block
    kept, causal = blocks.to_dense(), every.to_dense()
    assert kept[:, :, -tail:].eq(causal[:, :, -tail:]).all() and not kept[:, :, :-tail].eq(causal[:, :, :-tail]).all()


def test_column_blocks_hold_the_heaviest_keys_and_every_query_block_keeps_them():
    q, k, v = random_qkv(2, 4, 2, N, 64)
    q, k = q * 3, k.clone()
    needle = 37  # a key the last block's queries all point at
    k[:, :, needle] = q[:, :, -BS:].mean(dim=2).view(2, 2, 2, 64).mean(dim=2) * 6
    params = _params(0.3, tail_blocks=0, column_blocks=2)
    perm, blocks = permute_and_select(q, k, v, params)
    sink = ((perm.positions == 0).to(torch.int8).argmax(dim=-1) // BS).to(torch.int32)
    columns = column_mask(perm.scores, perm.positions, block_size=BS, segment_size=SEG, column_blocks=2, sink=sink)
    assert columns.sum(-1).eq(2).all()
    needle_block = (perm.positions == needle).to(torch.int8).argmax(dim=-1) // BS
    assert columns.gather(-1, needle_block[..., None]).eq(1).all(), "the needle's block is a column"
    kept = blocks.to_dense()                                    # (B, Hq, NQB, NKB)
    kmin = torch.full(columns.shape, N)                         # smallest position per permuted block
    kmin = kmin.scatter_reduce(-1, torch.arange(N).expand(2, 2, N) // BS, perm.positions.long(), "amin")
    nqb = kept.shape[2]
    for b in range(2):
        for h in range(4):
            for j in columns[b, h // 2].nonzero().flatten().tolist():
                visible = [i for i in range(nqb) if kmin[b, h // 2, j] <= min((i + 1) * BS, N) - 1]
                assert all(kept[b, h, i, j] for i in visible), (b, h, j)
    out = pbs_attention(q, k, v, params, launch=TILES)
    assert rel_l2(out, reference_for(q, perm, blocks)) < 1e-5, "exact on the kept blocks"


def test_columns_are_not_the_sink_nor_the_last_segment_and_respect_the_budget():
    scores = torch.rand(1, 1, 160)
    scores[..., 0] = 10.0                 # the sink: heaviest, kept anyway
    scores[..., 150] = 9.0                # in the last segment (blocks 8, 9 of 16 keys, segments of 32)
    pos = torch.arange(160, dtype=torch.int32).view(1, 1, 160)
    mask = column_mask(scores, pos, block_size=16, segment_size=32, column_blocks=100,
                       sink=torch.zeros(1, 1, dtype=torch.int32))
    assert mask[0, 0].tolist() == [0] + [1] * 7 + [0, 0]
    assert column_mask(scores, pos, block_size=16, segment_size=32, column_blocks=0,
                       sink=torch.zeros(1, 1, dtype=torch.int32)).sum() == 0


def test_a_prompts_first_chunk_is_whole_prompt_pbs_to_the_bit_with_the_knobs():
    q, k, v = random_qkv(1, 4, 2, N, 64)
    params = _params(0.6, tail_blocks=2, column_blocks=2)
    out, state = pbs_attention_chunk(q, k, v, params, launch=TILES)
    assert torch.equal(out, pbs_attention(q, k, v, params, launch=TILES))
    chunk, state = pbs_attention_chunk(q[:, :, :96], k[:, :, :96], v[:, :, :96], params, launch=TILES)
    more, state = pbs_attention_chunk(q[:, :, 96:], k, v, params, state=state, launch=TILES, return_blocks=False)
    # the later chunk's columns follow its own last block over every key, its tail is exact
    dense = causal_attention(q[:, :, 96:], k, v, SCALE)
    assert rel_l2(more[:, :, -8 - BS:], dense[:, :, -8 - BS:]) < 1e-5


def test_the_columns_of_a_chunk_come_from_its_last_block_over_every_key():
    q, k, v = random_qkv(1, 2, 1, N, 64)
    mass = last_block_key_scores(q[:, :, 120:], k, block_size=BS, scale=SCALE)
    assert mass.shape == (1, 1, N) and torch.allclose(mass.sum(-1), torch.ones(1, 1))


@pytest.mark.parametrize("field,value", [("tail_blocks", -1), ("column_blocks", 2.5), ("tail_blocks", True),
                                         ("column_blocks", "8")])
def test_a_bad_knob_is_one_clear_line(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a whole number of blocks, 0 or more") as err:
        PbsParams(BS, SEG, 0.9, **{field: value})
    assert "\n" not in str(err.value)


def test_the_knobs_are_on_by_default_and_written_only_when_they_differ():
    from pbs_tune.profile.params import DEFAULT_COLUMN_BLOCKS, DEFAULT_TAIL_BLOCKS
    p = PbsParams(128, 256, 0.9)
    assert (p.tail_blocks, p.column_blocks) == (DEFAULT_TAIL_BLOCKS, DEFAULT_COLUMN_BLOCKS) and min(
        DEFAULT_TAIL_BLOCKS, DEFAULT_COLUMN_BLOCKS) > 0
    assert "tail_blocks" not in p.as_dict()
    off = PbsParams(128, 256, 0.9, tail_blocks=0, column_blocks=0).as_dict()
    assert (off["tail_blocks"], off["column_blocks"]) == (0, 0) and PbsParams(**off).tail_blocks == 0
