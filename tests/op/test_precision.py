"""The 8-bit attend modes (interpreter, which runs INT8 and FP8 tl.dot exactly) against float64.

Tight: each mode against float64 attention over its own dequantised inputs on the same kept blocks.
Bounded: against exact attention (random heads; the bounds are what benchmarks/README.md states).
"""
import math

import pytest
import torch

from pbs_tune import LaunchConfig, PbsParams, attend_blocks, pbs_attention, pbs_attention_varlen, permute_and_select
from pbs_tune.kernels.quantize import quantize_int8
from pbs_tune.op.precision import attend_inputs
from pbs_tune.profile.params import check_precision_on, precisions_on
from helpers import allowed_matrix, masked_attention, random_qkv, reference_for, rel_l2

# (PBS block, launch): one key tile per block on the portable kernel, two per block on the Hopper one.
LAUNCHES = [(32, LaunchConfig(32, 32, 4, 1)), (64, LaunchConfig(64, 32, 4, 2, tma=True))]


def _dequantised(q, perm, low):
    """float64 q, k, v as the kernel sees them (k smoothed: softmax is the same)."""
    qs, ks, vs = low.scales
    q_dq = low.q.double() * qs.double()[..., None]
    k_dq = low.k.double() * ks.double()[..., None]
    v_dq = perm.v.double() if vs is None else low.v.double() * vs.double()[:, :, None, :]
    return q_dq, k_dq, v_dq


@pytest.mark.parametrize("block,launch", LAUNCHES, ids=["portable", "hopper"])
# int8+fp8: 0.036-0.041 over 25 seeds (P rounded to e4m3, which the reference does not do).
@pytest.mark.parametrize("precision,tight", [("int8", 1e-5), ("int8+fp8", 0.05)])
def test_each_mode_matches_float64_attention_over_its_own_quantised_inputs(block, launch, precision, tight):
    q, k, v = random_qkv(1, 4, 2, 150, 64)
    perm, blocks = permute_and_select(q, k, v, block_size=block, segment_size=2 * block, threshold=0.8)
    out = attend_blocks(q, perm, blocks, launch=launch, precision=precision)
    q_dq, k_dq, v_dq = _dequantised(q, perm, attend_inputs(q, perm.k, perm.v, precision))
    allowed = allowed_matrix(blocks, perm.positions, q.shape[2], 2)
    # int8: the only difference is float32 rounding. int8+fp8: P is rounded to e4m3 as well (3
    # mantissa bits), which the reference does not do: the bound is that rounding's size.
    assert rel_l2(out, masked_attention(q_dq, k_dq, v_dq, allowed, 1 / math.sqrt(64))) < tight
    # Against exact attention on the same blocks: what the precision costs on random heads.
    assert rel_l2(out, reference_for(q, perm, blocks)) < {"int8": 0.015, "int8+fp8": 0.08}[precision]


def test_smoothing_keeps_softmax_and_the_lse_under_a_large_shared_key_offset():
    q, k, v = random_qkv(1, 2, 1, 96, 64)
    k = k + 30.0 * torch.randn(64)  # every key shares a large component: without smoothing it eats the int8 grid
    perm, blocks = permute_and_select(q, k, v, block_size=32, segment_size=64, threshold=1.0)
    exact, exact_lse = attend_blocks(q, perm, blocks, return_lse=True)
    out, lse = attend_blocks(q, perm, blocks, return_lse=True, precision="int8")
    assert rel_l2(out, exact) < 0.015
    assert (lse - exact_lse).abs().max() < 0.05  # the LSE gets back what smoothing took (q . mean key)
    low = attend_inputs(q, perm.k, perm.v, "int8")
    assert low.key_mean.abs().max() > 10  # the offset is what was taken away


@pytest.mark.parametrize("group", [1, 32])
def test_the_quantizer_rounds_to_nearest_with_one_scale_per_row_or_block(group):
    x = torch.randn(1, 2, 97, 64) * torch.rand(1, 2, 97, 1) * 10
    mean = torch.randn(1, 2, 64)
    x[0, 0, 32:64] = mean[0, 0]  # a block all zero once smoothed: scale 0, values exactly 0
    x[0, 1, 5] = 1e30            # a huge value: its row (or block) scale follows it, nothing overflows
    xq, xs = quantize_int8(x, group=group, mean=mean)  # 97 = 3 blocks + a one-key block
    y = (x - mean[:, :, None, :]).double()
    amax = y.abs().amax(-1)
    if group > 1:
        amax = torch.cat([amax[..., i:i + group].amax(-1, keepdim=True).expand(-1, -1, min(group, 97 - i))
                          for i in range(0, 97, group)], -1)
    assert torch.allclose(xs.double(), amax / 127, rtol=1e-6)
    ref = torch.where(amax[..., None] > 0, y / (amax[..., None] / 127), 0.0)
    assert (xq.double() - ref).abs().max() <= 0.5 + 1e-3   # nearest integer (ties either way)
    assert xq.abs().max() <= 127
    assert bool((xs[0, 0, 32:64] == 0).all()) and bool((xq[0, 0, 32:64] == 0).all())
    assert torch.isfinite(xs).all()


def test_a_call_takes_precision_as_a_parameter_and_16_bit_is_untouched():
    q, k, v = random_qkv(1, 4, 2, 100, 64)
    launch = LaunchConfig(32, 32, 4, 1)
    default = pbs_attention(q, k, v, block_size=32, segment_size=64, threshold=0.9, launch=launch)
    same = pbs_attention(q, k, v, PbsParams(32, 64, 0.9, precision="input"), launch=launch)
    assert torch.equal(default, same)
    low = pbs_attention(q, k, v, block_size=32, segment_size=64, threshold=0.9, precision="int8", launch=launch)
    assert 0 < rel_l2(low, default) < 0.015


def test_the_varlen_form_runs_each_sequence_in_the_precision_asked():
    q, k, v = random_qkv(1, 2, 1, 130, 64)
    cu = torch.tensor([0, 50, 130], dtype=torch.int32)
    packed = [t[0].transpose(0, 1).contiguous() for t in (q, k, v)]
    params = PbsParams(32, 64, 0.9, precision="int8")
    out = pbs_attention_varlen(*packed, cu, cu, 80, 80, params, launch=LaunchConfig(32, 32, 4, 1))
    for a, b in ((0, 50), (50, 130)):
        one = pbs_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], params, launch=LaunchConfig(32, 32, 4, 1))
        assert torch.equal(out[a:b], one[0].transpose(0, 1))


def test_precision_is_checked_where_it_is_made_and_against_the_gpu():
    with pytest.raises(ValueError, match="precision must be one of input, int8, int8\\+fp8, got 'fp4'"):
        PbsParams(32, 64, 0.9, precision="fp4")
    assert PbsParams(32, 64, 0.9).as_dict() == dict(block_size=32, segment_size=64, threshold=0.9)
    assert PbsParams(32, 64, 0.9, precision="int8").as_dict()["precision"] == "int8"
    with pytest.raises(ValueError, match="precision 'int8\\+fp8' needs sm_89\\+ .* this GPU is sm_80: use "
                                         "precision 'int8' or 'input'"):
        check_precision_on("int8+fp8", (8, 0))
    check_precision_on("int8+fp8", (9, 0))
    q, k, v = random_qkv(1, 2, 1, 40, 64)
    with pytest.raises(ValueError, match="precision 'int8\\+fp8' needs launch.block_n >= 32 .* got 16: use a larger"):
        pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.9, precision="int8+fp8")
    assert precisions_on(80) == ("input", "int8") and precisions_on(90) == ("input", "int8", "int8+fp8")
