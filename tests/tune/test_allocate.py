"""Per-head thresholds under one layer error bound."""
import torch

from pbs_tune.tune.allocate import GRID, HeadCurves, allocate, head_curves, uniform_error


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
    q, k, v = torch.randn(1, 4, 160, 64) * 2, torch.randn(1, 2, 160, 64) * 2, torch.randn(1, 2, 160, 64)
    q[:, :2] *= 0.1  # two heads with flat attention, two sharp ones
    a = head_curves(q, k, v, block_size=16, segment_size=32, grid=GRID)
    b = head_curves(q.flip(2), k.flip(2), v.flip(2), block_size=16, segment_size=32, grid=GRID)
    both = a + b
    assert torch.equal(both.kept, a.kept + b.kept)
    assert torch.all(both.sq_err[:, -1] / both.ref_sq < 1e-10)      # threshold 1.0 is exact (fp32)
    assert torch.all(both.kept[:, :-1] <= both.kept[:, 1:] + 1e-9)  # more threshold, more blocks
    bound = uniform_error(both, 0.9)
    chosen = allocate(both, bound)
    index = torch.tensor([GRID.index(t) for t in chosen])
    assert both.rel_l2(index) <= bound + 1e-12
    assert both.kept[torch.arange(4), index].sum() <= both.kept[:, GRID.index(0.9)].sum()
