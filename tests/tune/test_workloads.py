import math

import pytest
import torch

from pbs_tune import permute_and_select
from pbs_tune.measure.workloads import NEEDLE_DEPTH, NEEDLES, WORKLOADS, make_qkv, question_rows


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


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_question_changes_only_its_rows_and_needles_and_question_false_is_the_earlier_data(workload):
    kw = dict(seqlen=600, heads=4, kv_heads=2, head_dim=64, dtype=torch.float32, seed=5)
    q, k, v = make_qkv(workload, **kw)
    q0, k0, v0 = make_qkv(workload, **kw, question=False)
    rows = question_rows(600)
    assert torch.equal(q[:, :, :-rows], q0[:, :, :-rows]) and not torch.equal(q[:, :, -rows:], q0[:, :, -rows:])
    changed = (k != k0).any(-1)                                   # (B, Hkv, N): the needles
    assert changed.sum(-1).ge(NEEDLES[0]).all() and changed.sum(-1).le(NEEDLES[1]).all()
    where = changed.nonzero()[:, 2]
    assert where.min() >= int(NEEDLE_DEPTH[0] * 600) and where.max() < int(NEEDLE_DEPTH[1] * 600)
    assert torch.equal((v != v0).any(-1), changed)                # their values are resized, nothing else
    # The earlier data, drawn the same way as before the question (a stream of its own for the question):
    # the first rows of q and every key but the needles do not depend on it.
    assert torch.equal(k[~changed], k0[~changed]) and torch.equal(v[~changed], v0[~changed])


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_last_rows_ask_for_far_needles_that_their_pooled_query_does_not_point_at(workload):
    n, d = 2048, 64
    q, k, v = make_qkv(workload, seqlen=n, heads=4, kv_heads=2, head_dim=d, dtype=torch.float32, seed=0)
    _, k0, _ = make_qkv(workload, seqlen=n, heads=4, kv_heads=2, head_dim=d, dtype=torch.float32, seed=0,
                        question=False)
    rows = question_rows(n)
    for h in range(4):
        keys = k[0, h // 2]
        needles = (keys != k0[0, h // 2]).any(-1).nonzero()[:, 0]
        asking = q[0, h, n - rows:]
        scores = asking @ keys.T / math.sqrt(d)                    # every key precedes the question's rows here
        scores[:, n - rows:] = scores[:, n - rows:].masked_fill(
            torch.ones(rows, rows, dtype=torch.bool).triu(1), float("-inf"))
        mass = torch.softmax(scores, dim=-1)[:, needles]           # (rows, needles)
        assert mass.max(-1).values.mean() > 0.75, (workload, h)   # most of a row's mass is on its needle
        own = scores[:, needles].max(-1).values.mean()             # a row's logit at the needle it asks for
        pooled = asking.mean(0) @ keys[needles].T / math.sqrt(d)    # the block's mean-pooled query at each
        assert pooled.max() < 0.6 * own, (workload, h)             # several questions: none points at one


def test_the_question_costs_little_and_needs_room_for_its_needles():
    with pytest.raises(ValueError, match="head_dim 4 leaves no room for the question's needle directions"):
        make_qkv("mixed", seqlen=64, heads=2, kv_heads=1, head_dim=4)
    q, k, v = make_qkv("mixed", seqlen=64, heads=2, kv_heads=1, head_dim=4, question=False)
    assert q.shape == (1, 2, 64, 4)
    short = dict(seqlen=3, heads=2, kv_heads=1, head_dim=64, dtype=torch.float32)  # too short to ask
    assert all(torch.equal(a, b)
               for a, b in zip(make_qkv("stripes", **short), make_qkv("stripes", **short, question=False)))
    for d in (8, 16):  # small heads: fewer needles, still orthogonal to the sink's and heavy hitters' directions
        q, k, v = make_qkv("retrieval", seqlen=256, heads=2, kv_heads=1, head_dim=d, dtype=torch.float32)
        assert torch.isfinite(q).all() and torch.isfinite(k).all() and torch.isfinite(v).all()
