import pytest
import torch

from pbs_tune import permute_and_select
from pbs_tune.measure.workloads import WORKLOADS, make_qkv


@pytest.mark.parametrize("workload", WORKLOADS)
def test_workloads_are_deterministic_and_shaped(workload):
    a = make_qkv(workload, seqlen=300, heads=8, kv_heads=4, head_dim=64, dtype=torch.float32, seed=3)
    b = make_qkv(workload, seqlen=300, heads=8, kv_heads=4, head_dim=64, dtype=torch.float32, seed=3)
    c = make_qkv(workload, seqlen=300, heads=8, kv_heads=4, head_dim=64, dtype=torch.float32, seed=4)
    assert [t.shape for t in a] == [(1, 8, 300, 64), (1, 4, 300, 64), (1, 4, 300, 64)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert all(torch.isfinite(t).all() for t in a)


def test_unknown_workload_is_an_error():
    with pytest.raises(ValueError, match="unknown workload"):
        make_qkv("nope", seqlen=10)


def test_structured_heads_are_sparser_than_diffuse_and_permutation_helps_stripes():
    kw = dict(seqlen=1024, heads=2, kv_heads=2, head_dim=64, dtype=torch.float32, seed=0)
    args = dict(block_size=64, segment_size=256, threshold=0.9)
    density = {}
    for w in ("stripes", "diffuse"):
        q, k, v = make_qkv(w, **kw)
        density[w] = permute_and_select(q, k, v, **args)[1].density()
        if w == "stripes":
            density["stripes_unpermuted"] = permute_and_select(q, k, v, **args, permute=False)[1].density()
    assert density["stripes"] < density["diffuse"]
    assert density["stripes"] < density["stripes_unpermuted"]
