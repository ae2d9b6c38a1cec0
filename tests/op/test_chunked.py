"""Chunked prefill: queries are the last rows of a longer key sequence (a cached prefix)."""
import math

import pytest
import torch

from pbs_tune import LaunchConfig, attend_blocks, pbs_attention, permute_and_select
from helpers import causal_attention, random_qkv, reference_for, rel_l2


@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("n_q,n_k,launch", [
    (64, 160, LaunchConfig(16, 16, 4, 1)),     # chunk starts on a segment boundary
    (37, 203, LaunchConfig(32, 16, 4, 1)),     # mid-block start, ragged end
    (1, 90, LaunchConfig(16, 16, 4, 1)),       # one query (a decode step)
    (150, 150, LaunchConfig(16, 32, 4, 1)),    # no prefix: the square case
])
def test_threshold_one_equals_dense_over_the_whole_prefix(permute, n_q, n_k, launch):
    q, k, v = random_qkv(2, 4, 2, n_q, 64, n_keys=n_k)
    out = pbs_attention(q, k, v, block_size=32, segment_size=64, threshold=1.0, permute=permute, launch=launch)
    assert out.shape == q.shape
    assert rel_l2(out, causal_attention(q, k, v, 1 / math.sqrt(64))) < 1e-5


@pytest.mark.parametrize("n_q,n_k,threshold", [(70, 230, 0.5), (96, 224, 0.8), (5, 131, 0.3)])
def test_sparse_chunk_is_exact_on_its_kept_blocks(n_q, n_k, threshold):
    q, k, v = random_qkv(2, 8, 2, n_q, 64, torch.float16, n_keys=n_k)
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=48, threshold=threshold)
    assert blocks.first_query_block == (n_k - n_q) // 16
    out = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1))
    assert rel_l2(out, reference_for(q, perm, blocks)) < 2e-3
    assert 0 < blocks.density() <= 1


def test_a_chunk_keeps_the_blocks_the_full_prompt_keeps_for_its_rows():
    """Selection of a chunk depends on its own queries only: the rows of the whole prompt's
    selection that belong to the chunk's query blocks are the chunk's selection."""
    n_k, n_q, bs = 256, 96, 32
    q_full, k, v = random_qkv(2, 4, 2, n_k, 64, n_keys=n_k)
    q = q_full[:, :, n_k - n_q:]
    # The key order comes from the last query block, which the chunk and the prompt share.
    _, whole = permute_and_select(q_full, k, v, block_size=bs, segment_size=64, threshold=0.6)
    _, part = permute_and_select(q, k, v, block_size=bs, segment_size=64, threshold=0.6)
    first = (n_k - n_q) // bs
    assert torch.equal(part.to_dense(), whole.to_dense()[:, :, first:])


def test_q_longer_than_k_is_one_clear_error():
    q, k, v = random_qkv(2, 4, 2, 64, 64, n_keys=32)
    with pytest.raises(ValueError, match="q is longer than k"):
        pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.9)
