"""The Hopper attend kernel (tensor descriptors, persistent grid) in the interpreter, against a
float64 reference and against the portable kernel on the same kept blocks."""
import dataclasses

import pytest
import torch

from pbs_tune import LaunchConfig, attend_blocks, block_list_from_mask, identity_permutation, permute_and_select
from pbs_tune.op.pbs_attention import tma_compatible
from helpers import reference_for, rel_l2

HOPPER = [LaunchConfig(16, 16, 4, 1, tma=True),                       # a program per query tile
          LaunchConfig(32, 16, 4, 2, tma=True, programs_per_sm=1),    # persistent: 3 programs
          LaunchConfig(16, 32, 4, 1, tma=True, programs_per_sm=2)]    # one key tile per block: index prefetch


@pytest.mark.parametrize("launch", HOPPER, ids=lambda c: c.label())
@pytest.mark.parametrize("n,threshold", [(131, 0.6), (64, 0.9), (203, 0.3)])
def test_hopper_kernel_matches_reference_and_portable_kernel(launch, n, threshold):
    q, k, v = (torch.randn(2, h, n, 64) for h in (4, 2, 2))
    perm, blocks = permute_and_select(q, k, v, block_size=32, segment_size=64, threshold=threshold)
    out = torch.full_like(q, float("nan"))
    got, lse = attend_blocks(q, perm, blocks, launch=launch, out=out, return_lse=True)
    assert torch.isfinite(got).all()  # every row written, including the ragged last tile
    assert rel_l2(got, reference_for(q, perm, blocks)) < 1e-5
    portable = dataclasses.replace(launch, tma=False, programs_per_sm=0)
    want, want_lse = attend_blocks(q, perm, blocks, launch=portable, return_lse=True)
    assert rel_l2(got, want) < 1e-6
    assert torch.allclose(lse, want_lse, atol=1e-5)


def test_hopper_kernel_reads_model_layout_strides():
    """q/k/v as transformers hands them over: (B, N, H, D) storage viewed as (B, H, N, D)."""
    n = 90
    q, k, v = (torch.randn(1, n, h, 128).transpose(1, 2) for h in (4, 2, 2))
    perm = identity_permutation(k, v)
    nb = -(-n // 16)
    keep = (torch.rand(1, 4, nb, nb) < 0.4) | torch.eye(nb, dtype=torch.bool)
    blocks = block_list_from_mask(keep & torch.ones(nb, nb, dtype=torch.bool).tril(), perm.positions, 16)
    got = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1, tma=True, programs_per_sm=1))
    assert rel_l2(got, reference_for(q, perm, blocks)) < 1e-5


def test_unaligned_inputs_run_the_portable_kernel_with_the_same_result():
    n = 50
    base = torch.randn(1 * 2 * n * 64 + 1)
    k = base[1:].view(1, 2, n, 64)  # 4-byte offset: no tensor descriptor can address it
    q, v = torch.randn(1, 4, n, 64), torch.randn(1, 2, n, 64)
    assert not tma_compatible(k) and tma_compatible(q, v)
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.7)
    got = attend_blocks(q, perm, blocks, launch=LaunchConfig(16, 16, 4, 1, tma=True))
    assert rel_l2(got, reference_for(q, perm, blocks)) < 1e-5


@pytest.mark.parametrize("fields,message", [
    (dict(programs_per_sm=2), "needs launch.tma"),
    (dict(tma=True, programs_per_sm=9), "programs_per_sm must be an integer in 0..8"),
    (dict(tma=1), "launch.tma must be true or false"),
])
def test_launch_config_rejects_infeasible_hopper_choices(fields, message):
    with pytest.raises(ValueError, match=message):
        LaunchConfig(16, 16, 4, 1, **fields).check(16)


def test_tma_is_refused_before_hopper():
    with pytest.raises(ValueError, match="needs a Hopper GPU or newer"):
        LaunchConfig(tma=True).check_device((8, 0))
    LaunchConfig(tma=True).check_device((9, 0))


def test_launch_config_round_trips_and_keeps_old_profiles_valid():
    plain = LaunchConfig(128, 64, 4, 3)
    assert plain.as_dict() == dict(block_m=128, block_n=64, num_warps=4, num_stages=3)
    hopper = LaunchConfig(128, 128, 8, 2, tma=True, programs_per_sm=2)
    assert LaunchConfig(**hopper.as_dict()) == hopper
    assert hopper.label() == "128x128w8s2-tma-p2"


@pytest.mark.parametrize("label", ["128x64w4s3", "128x128w8s2-tma", "64x64w4s2-tma-p2", "128x128w8s3-tma-p1"])
def test_launch_labels_parse_back(label):
    assert LaunchConfig.parse(label).label() == label


def test_bad_launch_label_says_what_is_expected():
    with pytest.raises(ValueError, match="is not like 128x128w8s3"):
        LaunchConfig.parse("128x128-tma")
