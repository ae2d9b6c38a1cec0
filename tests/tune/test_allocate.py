"""Per-head thresholds under one layer error bound."""
import torch

from pbs_tune.tune.allocate import (GRID, REFERENCE_VARIANT, HeadCurves, LayerPlan, Variant, allocate, head_curves,
                                    uniform_error)


def test_allocation_spends_the_budget_on_the_heads_that_need_it():
    grid = (0.5, 0.9, 1.0)
    # Head 0 is easy (tiny error at any threshold), head 1 is hard.
    curves = HeadCurves(grid, sq_err=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.05, 0.0]], dtype=torch.float64),
                        kept=torch.tensor([[10.0, 40.0, 100.0], [10.0, 40.0, 100.0]], dtype=torch.float64),
                        ref_sq=torch.tensor([1.0, 1.0], dtype=torch.float64))
    bound = uniform_error(curves, 0.9)  # what one threshold of 0.9 gives
    chosen = allocate(curves, bound)
    assert chosen == (0.5, 0.9)          # the easy head drops to 0.5, the hard one keeps 0.9
    index = torch.tensor([grid.index(t) for t in chosen])
    assert curves.rel_l2(index) <= bound
    assert allocate(curves, 0.0) == (0.5, 1.0)      # a bound only exact heads meet
    assert allocate(curves, 10.0) == (0.5, 0.5)     # a loose bound: the cheapest everywhere


def test_never_worse_than_one_threshold_where_the_lagrangian_misses():
    grid = (0.5, 0.9, 1.0)
    curves = HeadCurves(grid, sq_err=torch.tensor([[0.001, 0.0005, 0.0], [1.0, 0.05, 0.0]], dtype=torch.float64),
                        kept=torch.tensor([[10.0, 40.0, 100.0], [10.0, 40.0, 100.0]], dtype=torch.float64),
                        ref_sq=torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert allocate(curves, uniform_error(curves, 0.9)) == (0.9, 0.9)


def test_measured_curves_add_up_and_the_allocation_holds_its_bound():
    q, k, v = torch.randn(1, 4, 96, 32) * 2, torch.randn(1, 2, 96, 32) * 2, torch.randn(1, 2, 96, 32)
    q[:, :2] *= 0.1  # two heads with flat attention, two sharp ones
    grid = (0.5, 0.8, 0.9, 0.95, 1.0)  # a part of GRID: every threshold costs a run of the op
    a = head_curves(q, k, v, block_size=16, segment_size=32, grid=grid)
    b = head_curves(q.flip(2), k.flip(2), v.flip(2), block_size=16, segment_size=32, grid=grid)
    both = a + b
    assert torch.equal(both.kept, a.kept + b.kept)
    assert torch.all(both.sq_err[:, -1] / both.ref_sq < 1e-10)      # threshold 1.0 is exact (fp32)
    assert torch.all(both.kept[:, :-1] <= both.kept[:, 1:] + 1e-9)  # more threshold, more blocks
    bound = uniform_error(both, 0.9)
    chosen = allocate(both, bound)
    index = torch.tensor([grid.index(t) for t in chosen])
    assert both.rel_l2(index) <= bound + 1e-12
    assert both.kept[torch.arange(4), index].sum() <= both.kept[:, grid.index(0.9)].sum()


def _brute_force_kept(top, rows, positions, blocks):
    B, H, S = top.shape
    dense = blocks.to_dense()
    bs = blocks.block_size
    out = torch.zeros((B, H, S), dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            slots = positions[b, h // (H // positions.shape[1])]
            for i, r in enumerate(rows.tolist()):
                keys = {int(p) for kb in dense[b, h, r // bs].nonzero().flatten().tolist()
                        for p in slots[kb * bs:(kb + 1) * bs]}
                out[b, h, i] = int(top[b, h, i]) in keys
    return out


def test_heaviest_key_kept_matches_a_brute_force_check_under_the_permutation():
    from pbs_tune.op.pbs_attention import permute_and_select
    from pbs_tune.tune.allocate import heaviest_key_kept, heaviest_keys, sampled_rows
    q, k, v = torch.randn(2, 4, 160, 32) * 2, torch.randn(2, 2, 160, 32) * 2, torch.randn(2, 2, 160, 32)
    rows = sampled_rows(160, 16, count=40)
    assert rows.max() == 159 and len(rows) >= 16 and torch.all(rows[1:] > rows[:-1])
    top = heaviest_keys(q, k, rows)
    scores = torch.einsum("bhsd,bhnd->bhsn", q[:, :, rows], k.repeat_interleave(2, 1))
    scores.masked_fill_(torch.arange(160)[None, :] > rows[:, None], float("-inf"))
    assert torch.equal(top, scores.argmax(-1))
    assert torch.all(top <= rows)  # causal
    for permute in (True, False):
        perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=0.6, permute=permute)
        got = heaviest_key_kept(top, rows, perm.positions, blocks)
        assert torch.equal(got, _brute_force_kept(top, rows, perm.positions, blocks))
    perm, blocks = permute_and_select(q, k, v, block_size=16, segment_size=32, threshold=1.0)
    assert heaviest_key_kept(top, rows, perm.positions, blocks).all()  # threshold 1 keeps every causal key


def test_the_recall_floor_keeps_a_retrieval_head_at_its_threshold():
    grid = (0.5, 0.9, 1.0)
    # Both heads lose little output error at 0.5, but head 1 then drops its heaviest keys.
    curves = HeadCurves(grid, sq_err=torch.tensor([[0.01, 0.0, 0.0], [0.01, 0.0, 0.0]], dtype=torch.float64),
                        kept=torch.tensor([[10.0, 40.0, 100.0], [10.0, 40.0, 100.0]], dtype=torch.float64),
                        ref_sq=torch.tensor([1.0, 1.0], dtype=torch.float64),
                        top_hits=torch.tensor([[8.0, 8.0, 8.0], [2.0, 8.0, 8.0]], dtype=torch.float64))
    need = curves.top_hits[:, grid.index(0.9)]
    assert curves.floor(need).tolist() == [0, 1]
    assert allocate(curves, 1.0) == (0.5, 0.5)                      # output error alone: both drop
    assert allocate(curves, 1.0, curves.floor(need)) == (0.5, 0.9)  # the floor holds head 1


def test_a_layer_plan_meets_its_bound_and_recall_or_is_the_reference():
    from pbs_tune.tune.allocate import plan_layer
    q, k, v = torch.randn(1, 4, 128, 32) * 2, torch.randn(1, 2, 128, 32) * 2, torch.randn(1, 2, 128, 32)
    q[:, :2] *= 0.1
    plan = plan_layer(q, k, v, block_size=32, segment_size=64, margin=0.95,
                      variants=(REFERENCE_VARIANT, Variant(False, "lse")))  # two of four, 4 blocks: interpreter time
    assert len(plan.thresholds) == 4 and all(t in GRID for t in plan.thresholds)
    assert plan.kept_ratio <= 1.0
    if plan.kept_ratio < 1.0:
        assert plan.rel_l2 <= 0.95 * plan.reference_rel_l2 + 1e-12
    else:
        assert plan.variant == REFERENCE_VARIANT and plan.thresholds == (0.9,) * 4
        assert plan.rel_l2 == plan.reference_rel_l2


def test_curves_of_a_batch_keep_each_sample_apart():
    grid = (0.5, 0.9, 1.0)
    q, k, v = torch.randn(2, 4, 96, 32) * 2, torch.randn(2, 2, 96, 32) * 2, torch.randn(2, 2, 96, 32)
    both = head_curves(q, k, v, block_size=16, segment_size=32, grid=grid)
    assert len(both.parts) == 2
    for i, part in enumerate(both.parts):
        alone = head_curves(q[i:i + 1], k[i:i + 1], v[i:i + 1], block_size=16, segment_size=32, grid=grid)
        assert alone.parts == [alone] and torch.equal(part.kept, alone.kept)
        assert torch.equal(part.top_hits, alone.top_hits)
        assert torch.allclose(part.sq_err, alone.sq_err, rtol=1e-4, atol=1e-12)
        assert torch.allclose(part.ref_sq, alone.ref_sq, rtol=1e-6)
    assert torch.equal(both.kept, both.parts[0].kept + both.parts[1].kept)


def _two_heads(sq_err):
    grid = (0.5, 0.9, 1.0)
    return HeadCurves(grid, sq_err=torch.tensor(sq_err, dtype=torch.float64),
                      kept=torch.tensor([[10.0, 40.0, 50.0], [10.0, 40.0, 50.0]], dtype=torch.float64),
                      ref_sq=torch.ones(2, dtype=torch.float64), top_hits=torch.full((2, 3), 8.0, dtype=torch.float64))


def test_the_margin_shrinks_until_a_plan_fitted_on_other_samples_holds_on_each():
    from pbs_tune.tune.allocate import _cheapest_plan, choose_plan, held_out_margin
    a = _two_heads([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]])    # head 0 looks free at 0.5 here...
    b = _two_heads([[0.004, 0.0, 0.0], [0.02, 0.01, 0.0]])  # ...but is not on the other sample
    fitted_on_a = _cheapest_plan({REFERENCE_VARIANT: a}, 1.0, 0.9)
    assert fitted_on_a.thresholds == (0.5, 0.9)
    on_b = b.rel_l2(torch.tensor([0, 1]))
    assert on_b > uniform_error(b, 0.9)  # over the bound out of sample
    assert held_out_margin({REFERENCE_VARIANT: a + b}, margin=1.0, reference=0.9) == 0.95
    plan = choose_plan({REFERENCE_VARIANT: a + b}, margin=1.0, reference=0.9)
    assert plan.margin == 0.95 and plan.thresholds == (0.5, 1.0)
    for left_out in (a, b):  # what the step above failed: each sample's error within the bound
        assert left_out.rel_l2(torch.tensor([0, 2])) <= uniform_error(left_out, 0.9)
    # Samples that agree leave the margin alone; one sample cannot be validated.
    assert held_out_margin({REFERENCE_VARIANT: a + a}, margin=0.9, reference=0.9) == 0.9
    assert held_out_margin({REFERENCE_VARIANT: b}, margin=0.9, reference=0.9) == 0.9


def test_without_any_margin_that_holds_out_of_sample_the_plan_is_the_reference():
    from pbs_tune.tune.allocate import choose_plan
    a = _two_heads([[0.0, 0.0, 0.0], [0.01, 0.01, 0.0]])
    b = _two_heads([[1.0, 0.0, 0.0], [0.01, 0.01, 0.0]])  # head 0 at 0.5 is fine on a, ruinous on b
    plan = choose_plan({REFERENCE_VARIANT: a + b}, margin=1.0, reference=0.9)
    assert plan.margin == 0.0 and plan.kept_ratio == 1.0 and plan.thresholds == (0.9, 0.9)


def test_sweep_trials_of_one_block_and_segment_share_their_layer_curves(monkeypatch):
    from pbs_tune.profile.launch import LaunchConfig
    from pbs_tune.tune import allocate, evaluate
    from pbs_tune.profile.profiles import PbsParams
    from pbs_tune.tune.space import TrialConfig
    cal = evaluate.load_calibration(seqlen=64, heads=2, kv_heads=1, head_dim=32, dtype=torch.float32, device="cpu")
    measured = []
    curves = {REFERENCE_VARIANT: _two_heads([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]]),
              Variant(False): _two_heads([[0.01, 0.0, 0.0], [0.03, 0.01, 0.0]])}

    def fake_curves(q, k, v, *, block_size, segment_size, launch=None, variants=None, tail_blocks=0, column_blocks=0):
        measured.append((block_size, segment_size, q.shape[0]))
        return curves
    monkeypatch.setattr(allocate, "layer_curves", fake_curves)
    launch = LaunchConfig(16, 16, 1, 1)
    cache = {}
    for threshold in (0.9, 0.5):  # the reference threshold changes, the curves do not
        plans = evaluate.layer_plans(cal, TrialConfig(PbsParams(16, 32, threshold), launch), 0.95, cache)
        assert plans == [allocate.choose_plan(curves, margin=0.95, reference=threshold)]
    assert measured == [(16, 32, 1)]  # measured once, one layer at a time
    evaluate.layer_plans(cal, TrialConfig(PbsParams(32, 64, 0.9), launch), 0.95, cache)
    knobs = (PbsParams(16, 32, 0.9).tail_blocks, PbsParams(16, 32, 0.9).column_blocks)  # the curves' too
    assert measured[-1] == (32, 64, 1) and set(cache) == {(16, 32, ("mean", "lse"), *knobs),
                                                          (32, 64, ("mean", "lse"), *knobs)}
    evaluate.layer_plans(cal, TrialConfig(PbsParams(16, 32, 0.9), launch), 0.95)  # no cache: measured again
    assert len(measured) == 3


def test_each_layer_takes_the_estimator_whose_curves_keep_fewest_blocks_within_the_bound():
    from pbs_tune.tune.allocate import choose_plan
    mean = _two_heads([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]])
    lse = _two_heads([[0.0, 0.0, 0.0], [0.004, 0.0, 0.0]])  # head 1 can drop to 0.5 under lse, not under mean
    plan = choose_plan({REFERENCE_VARIANT: mean, Variant(True, "lse"): lse}, margin=1.0, reference=0.9)
    assert plan.variant == Variant(True, "lse") and plan.thresholds == (0.5, 0.5) and plan.kept_ratio == 0.25
    worse = _two_heads([[0.05, 0.05, 0.0], [0.05, 0.05, 0.0]])  # lse over the bound everywhere: the mean plan
    plan = choose_plan({REFERENCE_VARIANT: mean, Variant(True, "lse"): worse}, margin=1.0, reference=0.9)
    assert plan.variant == REFERENCE_VARIANT and plan.thresholds == (0.5, 0.9)
    # Stored with its estimator; plans of earlier releases (no estimator) read back as "mean".
    assert LayerPlan.from_dict(
        LayerPlan(True, (0.5, 0.5), 0.25, 0.0, 0.1, estimator="lse").as_dict()).estimator == "lse"
    old = dict(permute=False, thresholds=[0.9, 0.8], kept_ratio=0.9, rel_l2=0.01, reference_rel_l2=0.02, margin=0.95)
    assert LayerPlan.from_dict(old).variant == Variant(False, "mean")


def test_a_planned_trial_runs_its_layer_estimator():
    from pbs_tune.profile.launch import LaunchConfig
    from pbs_tune.profile.profiles import PbsParams
    from pbs_tune.tune.space import TrialConfig
    cfg = TrialConfig(PbsParams(16, 32, 0.9), LaunchConfig(16, 16, 1, 1))
    params = cfg.planned(LayerPlan(False, (0.5, 0.7), 0.5, 0.0, 0.1, estimator="lse"))
    assert (params.threshold, params.permute, params.estimator) == ((0.5, 0.7), False, "lse")


def test_a_variant_that_fails_out_of_sample_leaves_the_others_margin_alone():
    from pbs_tune.tune.allocate import choose_plan
    mean_a = _two_heads([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]])
    mean_b = _two_heads([[0.0, 0.0, 0.0], [0.02, 0.01, 0.0]])   # mean: head 0 free at 0.5 on both samples
    lse_a = _two_heads([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])      # lse: everything free on sample a...
    lse_b = _two_heads([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])      # ...ruinous on sample b
    curves = {REFERENCE_VARIANT: mean_a + mean_b, Variant(True, "lse"): lse_a + lse_b}
    plan = choose_plan(curves, margin=1.0, reference=0.9)
    # Judged together, every fold would pick lse (cheapest in sample) and fail, leaving the reference.
    assert plan.variant == REFERENCE_VARIANT and plan.thresholds == (0.5, 0.9) and plan.margin == 1.0

