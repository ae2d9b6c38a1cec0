"""The attend kernel (interpreter mode) against a float64 reference on the same kept blocks."""
import math

import pytest
import torch
import torch.nn.functional as F

from pbs_tune import (LaunchConfig, attend_blocks, block_list_from_mask, identity_permutation, pbs_attention,
                      permute_and_select)
from pbs_tune.op.permutation import KeyPermutation
from helpers import allowed_matrix, causal_attention, random_qkv, reference_for, rel_l2

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,threshold,launch", [
    (131, 0.6, LaunchConfig(16, 16, 4, 1)),
    (97, 0.85, LaunchConfig(32, 16, 4, 2)),
    (160, 0.3, LaunchConfig(16, 32, 4, 1)),
])
def test_sparse_output_matches_reference_on_kept_blocks(dtype, n, threshold, launch):
    q, k, v = random_qkv(2, 8, 2, n, 64, dtype)
    perm, blocks = permute_and_select(q, k, v, block_size=32, segment_size=64, threshold=threshold)
    out = attend_blocks(q, perm, blocks, launch=launch)
    assert rel_l2(out, reference_for(q, perm, blocks)) < TOL[dtype]


def test_random_block_masks_with_head_dim_128():
    n, bs = 150, 16
    q, k, v = random_qkv(1, 4, 4, n, 128)
    perm = identity_permutation(k, v)
    nb = -(-n // bs)
    keep = torch.rand(1, 4, nb, nb) < 0.3
    keep |= torch.eye(nb, dtype=torch.bool)
    blocks = block_list_from_mask(keep & torch.ones(nb, nb, dtype=torch.bool).tril(), perm.positions, bs)
    out = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1))
    assert rel_l2(out, reference_for(q, perm, blocks)) < 1e-5


@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("n", [1, 13, 64, 203])
def test_threshold_one_equals_dense_sdpa(permute, n):
    q, k, v = random_qkv(2, 4, 2, n, 64)
    out = pbs_attention(q, k, v, block_size=16, segment_size=48, threshold=1.0, permute=permute,
                        launch=LaunchConfig(16, 16, 4, 1))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_l2(out, sdpa) < 1e-5
    assert rel_l2(out, causal_attention(q, k, v, 1 / math.sqrt(64))) < 1e-5


def test_gqa_equals_repeated_kv():
    q, k, v = random_qkv(1, 8, 2, 111, 64)
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.7)
    launch = LaunchConfig(16, 16, 4, 1)
    out_gqa = attend_blocks(q, perm, blocks, launch=launch)
    repeated = KeyPermutation(k=perm.k.repeat_interleave(4, dim=1).contiguous(),
                              v=perm.v.repeat_interleave(4, dim=1).contiguous(),
                              positions=perm.positions.repeat_interleave(4, dim=1).contiguous())
    out_rep = attend_blocks(q, repeated, blocks, launch=launch)
    assert rel_l2(out_gqa, out_rep) < 1e-6
    dense = pbs_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), block_size=16,
                          segment_size=32, threshold=1.0, launch=launch)
    assert rel_l2(pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=1.0, launch=launch),
                  dense) < 1e-5


def test_attend_is_invariant_to_key_order_within_segments():
    n, seg = 120, 32
    q, k, v = random_qkv(1, 4, 2, n, 64)
    ident = identity_permutation(k, v)
    _, blocks = permute_and_select(q, k, v, block_size=16, segment_size=seg, threshold=1.0, permute=False)
    order = torch.cat([torch.randperm(min(seg, n - s)) + s for s in range(0, n, seg)])
    shuffled = KeyPermutation(k=k[:, :, order].contiguous(), v=v[:, :, order].contiguous(),
                              positions=order.to(torch.int32).expand(1, 2, n).contiguous())
    blocks_shuffled = block_list_from_mask(_keep_all(blocks, seg // 16), shuffled.positions, 16)
    launch = LaunchConfig(16, 16, 4, 1)
    a = attend_blocks(q, ident, blocks, launch=launch)
    b = attend_blocks(q, shuffled, blocks_shuffled, launch=launch)
    assert rel_l2(b, a) < 1e-5


def _keep_all(blocks, blocks_per_seg):
    """Every block up to the end of each query block's segment (the kernel masks by position)."""
    B, H, nb = blocks.count.shape
    qb = torch.arange(nb)
    last = (qb // blocks_per_seg + 1) * blocks_per_seg - 1
    return (torch.arange(nb)[None, :] <= last[:, None]).expand(B, H, nb, nb)


def test_poisoned_output_buffer_is_fully_overwritten():
    q, k, v = random_qkv(2, 4, 2, 77, 64)
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.5)
    out = torch.full_like(q, float("nan"))
    out2, lse = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1), out=out, return_lse=True)
    assert out2 is out
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_l2(out, reference_for(q, perm, blocks)) < 1e-5


def test_lse_gives_attention_recall():
    q, k, v = random_qkv(1, 2, 2, 90, 64)
    launch = LaunchConfig(16, 16, 4, 1)
    perm, dense_blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=1.0)
    _, lse_dense = attend_blocks(q, perm, dense_blocks, launch=launch, return_lse=True)
    _, sparse_blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.3)
    _, lse_sparse = attend_blocks(q, perm, sparse_blocks, launch=launch, return_lse=True)
    s = (q.double() @ perm.k.double().transpose(-1, -2)) / 8.0
    allowed = allowed_matrix(sparse_blocks, perm.positions, 90, 1)
    causal = allowed_matrix(dense_blocks, perm.positions, 90, 1)
    p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
    recall = (p * allowed).sum(-1)
    assert torch.allclose(torch.exp(lse_sparse - lse_dense).double(), recall, atol=1e-5)


def test_per_head_thresholds_stay_exact_on_kept_blocks():
    q, k, v = random_qkv(1, 4, 2, 150, 64)
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=(0.2, 0.95, 0.5, 1.0))
    out = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1))
    assert rel_l2(out, reference_for(q, perm, blocks)) < 1e-5
    dense_head = pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=1.0,
                               launch=LaunchConfig(16, 16, 4, 1))
    assert rel_l2(out[:, 3], dense_head[:, 3]) < 1e-5  # the head at 1.0 is dense attention


def test_the_attend_kernels_lse_over_every_block_is_the_exact_dense_lse():
    """The dense reference of recall: computed in torch on the CPU, by the kernel on a GPU; the same."""
    from pbs_tune.measure.metrics import dense_lse
    from pbs_tune.op.permutation import identity_permutation
    from pbs_tune.op.selection import causal_block_list
    q, k, v = random_qkv(2, 4, 2, 96, 64)
    perm = identity_permutation(k, v)
    _, lse = attend_blocks(q, perm, causal_block_list(4, perm.positions, 16), return_lse=True)
    assert torch.allclose(lse, dense_lse(q, k, v), atol=1e-5)
