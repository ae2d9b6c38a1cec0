"""The launch counter: torch ops that do work are counted, views, allocations and the interpreter's
own traffic are not; Triton kernels by name."""
import torch

from pbs_tune.bench.launch_count import count_chunk, counting
from pbs_tune.op.pbs_attention import pbs_attention
from pbs_tune.profile.params import PbsParams


def test_work_is_counted_views_and_allocations_are_not():
    x = torch.randn(4, 8)
    with counting() as (calls, ops):
        y = x.view(2, 16).t()  # views: no work
        z = torch.empty(3)     # an allocation: no work
        w = y + 1
        z.copy_(w[:3, 0])
    assert dict(ops) == {"aten.add": 1, "aten.copy_": 1} and calls == []


def test_an_interpreted_launch_counts_as_its_kernel_only():
    q, k, v = torch.randn(1, 2, 128, 64), torch.randn(1, 1, 128, 64), torch.randn(1, 1, 128, 64)
    params = PbsParams(16, 32, 0.9, column_blocks=0)
    with counting() as (calls, ops):
        pbs_attention(q, k, v, params)
    names = [c.fn.__name__ for c in calls]
    assert names[-1] == "_attend_fwd" and "_segment_permute" in names
    assert "aten.set_" not in ops and "aten.new_empty" not in ops  # the interpreter moving arguments


def test_a_chunk_with_its_state_and_the_stateless_op_are_counted_the_same_way_each_time():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 192, 64), torch.randn(1, 1, 192, 64), torch.randn(1, 1, 192, 64)
    params = PbsParams(16, 32, 0.9, column_blocks=0)
    first, again = count_chunk(q, k, v, params, 128), count_chunk(q, k, v, params, 128)
    assert first == again
    for row in first.values():
        assert row["launches"] == row["triton"] + row["torch"] and row["triton_kernels"]["_attend_fwd"] == 1
    # Columns follow the chunk's last query block over every key: the state path scores the whole
    # prefix again for them (the stateless op already scored it), two Triton launches more.
    with_columns = count_chunk(q, k, v, PbsParams(16, 32, 0.9, column_blocks=4), 128)
    assert with_columns["state"]["triton"] == first["state"]["triton"] + 2
    assert with_columns["stateless"]["triton"] == first["stateless"]["triton"]
