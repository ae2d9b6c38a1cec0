"""The selection-rule prototypes reproduce the op's own rules on the same input."""
import pytest
import torch

from pbs_tune.bench import selection_rules as rules
from pbs_tune.op.pbs_attention import key_order, permute_and_select
from pbs_tune.op.selection import block_list_from_mask
from pbs_tune.measure.workloads import make_qkv


@pytest.mark.parametrize("prototype,estimator", [("mean", "mean"), ("lse_ns", "lse")])
def test_the_prototype_of_the_ops_rule_keeps_the_ops_blocks(prototype, estimator, monkeypatch):
    monkeypatch.setattr(rules, "BLOCK", 32)
    monkeypatch.setattr(rules, "SEGMENT", 64)
    q, k, v = make_qkv("mixed", seqlen=512, heads=4, kv_heads=2, head_dim=64, dtype=torch.float32, seed=3)
    perm = key_order(q, k, v, block_size=32, segment_size=64, scale=0.125)
    keeps = rules.rule_keeps(q, perm, 0.125)
    for t in (0.85, 0.9):
        mine = block_list_from_mask(keeps[(prototype, t)], perm.positions, 32)
        _, ops = permute_and_select(q, k, v, block_size=32, segment_size=64, threshold=t, estimator=estimator,
                                    tail_blocks=0, column_blocks=0)  # the prototypes are of the rules alone
        assert torch.equal(mine.to_dense(), ops.to_dense()), (prototype, t)
