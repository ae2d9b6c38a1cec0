"""Packed batches (FlashAttention's varlen layout): each sequence on its own, exact at threshold 1."""
import math

import pytest
import torch

from pbs_tune import LaunchConfig, pbs_attention, pbs_attention_varlen
from helpers import causal_attention, rel_l2

LAUNCH = LaunchConfig(16, 16, 4, 1)
PARAMS = dict(block_size=16, segment_size=32, launch=LAUNCH)


def packed(lengths_q, lengths_k, hq=4, hkv=2, d=64):
    cu_q = torch.tensor([0] + lengths_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lengths_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q = torch.randn(int(cu_q[-1]), hq, d)
    k, v = torch.randn(int(cu_k[-1]), hkv, d), torch.randn(int(cu_k[-1]), hkv, d)
    return q, k, v, cu_q, cu_k


def run(q, k, v, cu_q, cu_k, threshold):
    return pbs_attention_varlen(q, k, v, cu_q, cu_k, int((cu_q[1:] - cu_q[:-1]).max()),
                                int((cu_k[1:] - cu_k[:-1]).max()), threshold=threshold, **PARAMS)


@pytest.mark.parametrize("lengths_q,lengths_k", [
    ([70, 33, 101], [70, 33, 101]),        # a packed batch of whole prompts
    ([20, 64, 1], [90, 64, 47]),           # chunks after cached prefixes, one decode-like row
])
def test_threshold_one_is_dense_causal_per_sequence(lengths_q, lengths_k):
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k)
    out = run(q, k, v, cu_q, cu_k, 1.0)
    for i in range(len(lengths_q)):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None]
        ks, vs = (t[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None] for t in (k, v))
        ref = causal_attention(qs, ks, vs, 1 / math.sqrt(64))[0].transpose(0, 1)
        assert rel_l2(out[cu_q[i]:cu_q[i + 1]], ref) < 1e-5


def test_sparse_equals_the_single_sequence_op():
    q, k, v, cu_q, cu_k = packed([48, 80], [112, 80])
    out = run(q, k, v, cu_q, cu_k, 0.5)
    for i in range(2):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None].contiguous()
        ks, vs = (t[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None].contiguous() for t in (k, v))
        alone = pbs_attention(qs, ks, vs, threshold=0.5, **PARAMS)[0].transpose(0, 1)
        assert rel_l2(out[cu_q[i]:cu_q[i + 1]], alone) < 1e-6


def test_no_sequence_reads_another():
    q, k, v, cu_q, cu_k = packed([40, 64, 29], [72, 64, 50])
    before = run(q, k, v, cu_q, cu_k, 0.6)
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    k2[cu_k[1]:cu_k[2]] += torch.randn_like(k2[cu_k[1]:cu_k[2]])
    v2[cu_k[1]:cu_k[2]] *= 3
    q2[cu_q[1]:cu_q[2]] = torch.randn_like(q2[cu_q[1]:cu_q[2]])
    after = run(q2, k2, v2, cu_q, cu_k, 0.6)
    for i in (0, 2):
        assert torch.equal(after[cu_q[i]:cu_q[i + 1]], before[cu_q[i]:cu_q[i + 1]])
    assert not torch.equal(after[cu_q[1]:cu_q[2]], before[cu_q[1]:cu_q[2]])


@pytest.mark.parametrize("change,match", [
    (lambda cq, ck: (cq.long(), ck), "int32"),
    (lambda cq, ck: (cq.flip(0), ck), "never decrease"),
    (lambda cq, ck: (cq, ck[:-1]), "batch \\+ 1"),
    (lambda cq, ck: (torch.tensor([0, 10, 60], dtype=torch.int32), ck), "ends at 60"),
    (lambda cq, ck: (torch.tensor([0, 30, 50], dtype=torch.int32), torch.tensor([0, 20, 70], dtype=torch.int32)),
     "sequence 0 has 30 queries but 20 keys"),
    (lambda cq, ck: (cq.float(), ck), "int32"),
    (lambda cq, ck: (cq.to("meta"), ck), "q's device or the CPU"),
])
def test_bad_cu_seqlens_are_one_clear_error(change, match):
    q, k, v, cu_q, cu_k = packed([20, 30], [20, 50])
    cq, ck = change(cu_q, cu_k)
    with pytest.raises((ValueError, TypeError), match=match):
        pbs_attention_varlen(q, k, v, cq, ck, 64, 64, threshold=0.9, **PARAMS)


def test_max_seqlen_below_the_longest_is_an_error():
    q, k, v, cu_q, cu_k = packed([20, 30], [20, 50])
    with pytest.raises(ValueError, match="below the longest"):
        pbs_attention_varlen(q, k, v, cu_q, cu_k, 30, 40, threshold=0.9, **PARAMS)
