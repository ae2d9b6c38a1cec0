"""The oracle block selection behind bench/oracle.py: exact block masses and the smallest set."""
import pytest
import torch

from helpers import random_qkv
from pbs_tune.bench import oracle
from pbs_tune.op.pbs_attention import key_order
from pbs_tune.measure.metrics import dense_reference


def test_block_mass_is_the_exact_causal_softmax_mass_per_block_pair():
    q, k, v = random_qkv(1, 2, 1, 48, 16)
    perm = key_order(q, k, v, block_size=16, segment_size=32)
    mass = oracle.block_mass(q, perm, 16, rows=32)  # row chunks that cut a query block's rows
    logits = (q[0].double() @ perm.k[0, 0].double().T) / 4.0
    logits.masked_fill_(perm.positions[0, 0][None, None, :] > torch.arange(48)[None, :, None], float("-inf"))
    p = logits.softmax(-1)                                                  # (2, 48, 48) over permuted keys
    expected = p.view(2, 3, 16, 3, 16).sum((2, 4))
    assert torch.allclose(mass[0].double(), expected, atol=1e-5)
    assert torch.allclose(mass.sum(-1), torch.full((1, 2, 3), 16.0), atol=1e-4)  # each row's mass is 1


def test_oracle_keeps_forced_blocks_and_the_fewest_heaviest_others():
    mass = torch.tensor([[[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [1.0, 5.0, 0.0, 0.0],
                           [6.0, 1.0, 2.0, 7.0]]]])
    forced = torch.zeros_like(mass, dtype=torch.bool)
    forced[..., 3, 3] = True                                          # a diagonal block (7 of 16)
    keep = oracle.oracle_keep(mass, forced, 0.8)                    # need 12.8: 7 + 6 = 13 suffices
    assert keep[0, 0, 3].tolist() == [True, False, False, True]
    assert keep[0, 0, 2].tolist() == [False, True, False, False]    # 5 of 6 reaches 0.8
    assert oracle.oracle_keep(mass, forced, 1.0)[0, 0, 3].all()


def test_estimators_are_the_exact_mass_of_fewer_or_pooled_rows():
    q, k, v = random_qkv(1, 2, 1, 64, 16)
    perm = key_order(q, k, v, block_size=16, segment_size=32)
    exact = oracle.block_mass(q, perm, 16)
    assert torch.allclose(oracle.probe_mass(q, perm, 16, probes=16), exact, atol=1e-5)  # every row: the oracle
    probes = oracle.probe_mass(q, perm, 16, probes=4)
    assert torch.allclose(probes.sum(-1), torch.full((1, 2, 4), 4.0), atol=1e-4)     # 4 rows' mass per block
    pooled = oracle.pooled_query_mass(q, perm, 16)
    assert pooled.shape == exact.shape and torch.allclose(pooled.sum(-1), torch.ones(1, 2, 4), atol=1e-4)


def test_the_frontier_compares_each_estimator_with_pbs_at_the_defaults_error():
    q, k, v = random_qkv(1, 2, 1, 64, 16)
    res = oracle.frontier(q, k, v, dense_reference(q, k, v), block=16, segment=32)
    assert len(res["pbs"]) == len(oracle.PBS_THRESHOLDS)
    for name in oracle.ESTIMATORS:
        assert len(res[name]["curve"]) == len(oracle.ORACLE_THRESHOLDS)
    top = res["oracle"]["curve"][-1]
    assert top["rel_l2"] <= res["default_rel_l2"] + 1e-6     # the oracle at 0.9995 is at least as accurate
    assert res["oracle"]["density_at_equal_error"] is not None and res["oracle"]["pbs_over_it"] > 0
    assert len(res["op_lse"]["curve"]) == len(oracle.ORACLE_THRESHOLDS)  # the op's own lse kernel, same sweep
    # Over several inputs (a model's layers), each estimator is summed where it reaches the default's error.
    never = dict(res, op_lse=dict(res["op_lse"], density_at_equal_error=None))
    total = oracle.summary([res, never])
    assert total["oracle"]["reached"] == 2 and total["op_lse"]["reached"] == 1 and total["op_lse"]["of"] == 2
    assert abs(total["oracle"]["pbs_over_it"] - res["oracle"]["pbs_over_it"]) < 1e-9


def test_a_plan_is_credited_with_the_part_of_the_default_to_oracle_gap_it_closes():
    def row(layer, default, best, plan, plan_err, dense=False):
        return dict(layer=layer, pbs_density_at_default=default, default_rel_l2=0.05,
                    plan=dict(density=plan, rel_l2=plan_err, dense=dense),
                    **{n: dict(density_at_equal_error=best) for n in oracle.NAMES})
    rows = [row(0, 0.4, 0.2, 0.3, 0.04), row(1, 0.5, None, 1.0, 0.0, dense=True)]
    assert oracle.recovered(rows[0]) == pytest.approx(0.5) and oracle.recovered(rows[1]) is None
    plan = oracle.summary(rows)["plan"]
    # summed over layers: default 0.9, oracle 0.2 + 0.5 (a layer it cannot match counts as the default's)
    assert plan["density_over_default"] == pytest.approx(1.3 / 0.9)
    assert plan["gap_closed"] == pytest.approx((0.9 - 1.3) / (0.9 - 0.7))
    assert plan["dense_layers"] == [1] and plan["layers_within_default_error"] == 2
