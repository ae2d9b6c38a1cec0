"""Permute and select stages on their own (pure torch, no kernel)."""
import math

import pytest
import torch

from pbs_tune import block_list_from_mask, permute_keys, select_blocks
from pbs_tune.op.permutation import last_block_key_scores
from pbs_tune.kernels import block_select
from pbs_tune.op import selection
from pbs_tune.op.selection import block_means


def test_permutation_sorts_each_complete_segment_and_values_follow():
    n, seg, bs = 150, 32, 16
    q, k, v = torch.randn(2, 6, n, 64), torch.randn(2, 3, n, 64), torch.randn(2, 3, n, 64)
    perm = permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=0.125)
    pos = perm.positions.long()
    scores = last_block_key_scores(q, k, block_size=bs, scale=0.125)
    for s in range(0, n, seg):
        e = min(n, s + seg)
        chunk = pos[..., s:e]
        assert torch.equal(chunk.sort(-1).values, torch.arange(s, e).expand_as(chunk))
        if e - s == seg:
            got = torch.gather(scores, -1, chunk)
            assert (got[..., :-1] >= got[..., 1:]).all()
        else:
            assert torch.equal(chunk, torch.arange(s, e).expand_as(chunk))  # tail stays put
    idx = pos[..., None].expand(-1, -1, -1, 64)
    assert torch.equal(perm.k, torch.gather(k, 2, idx))
    assert torch.equal(perm.v, torch.gather(v, 2, idx))


@pytest.mark.parametrize("n,bs,hq", [(70, 16, 4), (45, 64, 8), (200, 32, 2), (130, 128, 4)])
def test_key_scores_are_group_mean_of_last_block_softmax(n, bs, hq):
    q, k = torch.randn(2, hq, n, 64) * 2, torch.randn(2, 2, n, 64)
    got = last_block_key_scores(q, k, block_size=bs, scale=0.125)
    g, rows = hq // 2, min(bs, n)
    for b in range(2):
        for h in range(2):
            ql = q[b, g * h:g * (h + 1), n - rows:].double()
            s = ql @ k[b, h].double().T * 0.125
            s = s.masked_fill(torch.arange(n)[None, None, :] > torch.arange(n - rows, n)[None, :, None], -math.inf)
            want = torch.softmax(s, -1).mean(dim=(0, 1))
            assert torch.allclose(got[b, h].double(), want, atol=1e-6)


def test_block_means_handle_a_short_tail():
    x = torch.randn(2, 37, 8)
    m = block_means(x, 16)
    assert m.shape == (2, 3, 8)
    assert torch.allclose(m[:, 2], x[:, 32:].mean(1))


def _heaviest_reaching(logits, cands, thr) -> set:
    """The fewest candidates, heaviest first by softmax of `logits`, whose mass reaches `thr`."""
    p, mass, out = torch.softmax(logits, -1), 0.0, set()
    for j in torch.argsort(p, descending=True).tolist():
        if mass >= thr:
            break
        out.add(cands[j])
        mass += float(p[j])
    return out


def _kept_sets(blocks):
    B, H, nb = blocks.count.shape
    return [[[set(blocks.index[b, h, i, :blocks.count[b, h, i]].tolist()) for i in range(nb)]
             for h in range(H)] for b in range(B)]


@pytest.mark.parametrize("bisect", [False, True], ids=["sort", "bisect"])
@pytest.mark.parametrize("thr", [0.3, 0.7, 0.95])
def test_selection_keeps_smallest_set_reaching_threshold_plus_diagonal_and_sink(thr, bisect, monkeypatch):
    monkeypatch.setattr(selection, "BISECT_FROM", 1 if bisect else 1 << 30)
    n, bs, seg, b_, hq, hkv = 250, 16, 64, 2, 4, 2
    q, k = torch.randn(b_, hq, n, 64) * 2, torch.randn(b_, hkv, n, 64) * 2
    pos = torch.arange(n, dtype=torch.int32).expand(b_, hkv, n).contiguous()
    blocks = select_blocks(q, k, pos, block_size=bs, segment_size=seg, threshold=thr, scale=0.125)
    kept = _kept_sets(blocks)
    pq, pk = block_means(q, bs).double(), block_means(k, bs).double()
    nb = -(-n // bs)
    for b in range(b_):
        for h in range(hq):
            for i in range(nb):
                first = (i // 4) * 4
                want = set(range(first, i + 1)) | {0}
                cands = list(range(first))
                if cands:
                    want |= _heaviest_reaching(pq[b, h, i] @ pk[b, h // 2, cands].T * 0.125, cands, thr)
                assert kept[b][h][i] == want, (b, h, i)
                # Full blocks (no mask) come first: exactly those before the query block.
                full = blocks.index[b, h, i, :blocks.full[b, h, i]].tolist()
                assert full == sorted(j for j in want if j < i)


def test_bisection_and_sort_keep_the_same_blocks():
    """Block logits with ties and a spread of scales: both searches give the same kept set."""
    B, H, nb, bs = 1, 4, 24, 16
    logits = torch.randn(B, H, nb, nb) * torch.tensor([0.5, 2.0, 6.0, 12.0]).view(1, H, 1, 1)
    logits[..., ::7] = logits[..., 3:4]  # ties
    kmin = (torch.arange(nb, dtype=torch.int32) * bs).expand(B, 2, nb).contiguous()
    kmax = kmin + bs - 1
    sink = torch.zeros(B, 2, dtype=torch.int32)
    thr = torch.tensor([0.5, 0.8, 0.95, 0.99], dtype=torch.float32)
    args = dict(heads=H, seqlen=nb * bs, block_size=bs, segment_size=4 * bs, threshold=thr)
    columns = torch.zeros(B, 2, nb, dtype=torch.int8)
    by_sort = block_select.select_rows(logits, kmin, kmax, sink, columns, bisect=False, **args)
    by_bisect = block_select.select_rows(logits, kmin, kmax, sink, columns, bisect=True, **args)
    assert torch.equal(by_sort[0], by_bisect[0]) and torch.equal(by_sort[1], by_bisect[1])
    for row_sort, row_bisect, n in zip(by_sort[2].flatten(0, 2), by_bisect[2].flatten(0, 2), by_sort[0].flatten()):
        assert torch.equal(row_sort[:n], row_bisect[:n])


def test_threshold_one_keeps_every_causal_block():
    n, bs = 100, 16
    q, k = torch.randn(2, 2, n, 64), torch.randn(2, 2, n, 64)
    pos = torch.arange(n, dtype=torch.int32).expand(2, 2, n).contiguous()
    blocks = select_blocks(q, k, pos, block_size=bs, segment_size=32, threshold=1.0, scale=0.125)
    nb = 7
    assert blocks.density() == 1.0
    assert torch.equal(blocks.count, torch.arange(1, nb + 1, dtype=torch.int32).expand(2, 2, nb))


def test_sink_block_follows_key_zero_after_permutation():
    n, bs, seg = 128, 16, 64
    q, k, v = torch.randn(1, 2, n, 64), torch.randn(1, 2, n, 64), torch.randn(1, 2, n, 64)
    perm = permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=0.125)
    blocks = select_blocks(q, perm.k, perm.positions, block_size=bs, segment_size=seg,
                           threshold=0.05, scale=0.125)
    sink = (perm.positions == 0).int().argmax(-1) // bs
    for h in range(2):
        for i in range(4, 8):  # query blocks of the second segment
            assert int(sink[0, h]) in blocks.index[0, h, i, :blocks.count[0, h, i]].tolist()


def test_diagonal_blocks_entirely_in_the_future_are_dropped():
    pos = torch.tensor([[[3, 2, 1, 0, 7, 6, 5, 4]]], dtype=torch.int32)  # blocks of 4, reversed
    keep = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    blocks = block_list_from_mask(keep, pos, 4)
    assert blocks.count.tolist() == [[[1, 2]]]
    assert blocks.full.tolist() == [[[0, 1]]]


@pytest.mark.parametrize("thr", [0.2, 0.5, 0.9])
def test_density_grows_with_threshold(thr):
    n, bs = 512, 16
    q, k = torch.randn(1, 2, n, 64), torch.randn(1, 1, n, 64)
    pos = torch.arange(n, dtype=torch.int32).expand(1, 1, n).contiguous()
    lo = select_blocks(q, k, pos, block_size=bs, segment_size=32, threshold=thr, scale=0.125)
    hi = select_blocks(q, k, pos, block_size=bs, segment_size=32, threshold=min(1.0, thr + 0.05), scale=0.125)
    assert 0 < lo.density() <= hi.density() <= 1.0


@pytest.mark.parametrize("n", [128, 150, 250])
def test_density_is_one_at_threshold_one_even_when_permuted(n):
    q, k, v = torch.randn(1, 4, n, 64) * 3, torch.randn(1, 2, n, 64) * 3, torch.randn(1, 2, n, 64)
    perm = permute_keys(q, k, v, block_size=16, segment_size=64, scale=0.125)
    all_blocks = select_blocks(q, perm.k, perm.positions, block_size=16, segment_size=64, threshold=1.0, scale=0.125)
    assert all_blocks.density() == 1.0
    some = select_blocks(q, perm.k, perm.positions, block_size=16, segment_size=64, threshold=0.3, scale=0.125)
    assert 0 < some.density() < 1.0


def test_per_head_thresholds_select_as_each_head_alone_would():
    n, bs, seg = 200, 16, 32
    q, k = torch.randn(1, 4, n, 64) * 2, torch.randn(1, 2, n, 64) * 2
    pos = torch.arange(n, dtype=torch.int32).expand(1, 2, n).contiguous()
    thresholds = (0.3, 0.9, 1.0, 0.6)
    mixed = select_blocks(q, k, pos, block_size=bs, segment_size=seg, threshold=thresholds, scale=0.125)
    for h, t in enumerate(thresholds):
        alone = select_blocks(q, k, pos, block_size=bs, segment_size=seg, threshold=t, scale=0.125)
        assert torch.equal(mixed.count[:, h], alone.count[:, h])
        assert _kept_sets(mixed)[0][h] == _kept_sets(alone)[0][h]
    with pytest.raises(ValueError, match="3 values for 4 query heads"):
        select_blocks(q, k, pos, block_size=bs, segment_size=seg, threshold=(0.5, 0.5, 0.5), scale=0.125)


@pytest.mark.parametrize("n,seg", [(150, 32), (200, 48), (64, 64), (40, 64)])
def test_segment_permute_kernel_equals_a_stable_descending_argsort_per_segment(n, seg):
    from pbs_tune.kernels.segment_sort import segment_permute
    scores = torch.randint(0, 6, (2, 3, n)).float() / 7  # many ties: order among equals must be by position
    k = torch.randn(2, n, 3, 64).transpose(1, 2)         # a strided view, as a model's layout gives
    v = torch.randn(2, 3, n, 64)
    k_perm, v_perm, pos = segment_permute(scores, k, v, segment_size=seg)
    full = (n // seg) * seg
    local = torch.argsort(scores[..., :full].reshape(2, 3, -1, seg), dim=-1, descending=True, stable=True)
    want = torch.cat([(local + torch.arange(0, full, seg)[:, None]).reshape(2, 3, full),
                      torch.arange(full, n).expand(2, 3, -1)], dim=-1)
    assert torch.equal(pos.long(), want)
    idx = want[..., None].expand(-1, -1, -1, 64)
    assert torch.equal(k_perm, torch.gather(k, 2, idx)) and torch.equal(v_perm, torch.gather(v, 2, idx))


@pytest.mark.parametrize("n,bs,hq", [(100, 16, 4), (64, 32, 2)])
def test_lse_block_logits_are_the_mean_query_mass_on_each_whole_key_block(n, bs, hq):
    from pbs_tune.kernels.block_scores import block_lse
    q, k = torch.randn(2, hq, n, 64), torch.randn(2, 2, n, 64)
    nb, group = -(-n // bs), hq // 2
    pooled = block_means(q, bs).view(2, 2, group * nb, 64)
    got = block_lse(pooled, k, block_size=bs, scale=0.125)
    dots = (pooled.double() @ k.double().transpose(-1, -2)) * 0.125                 # (2, 2, R, n)
    dots = torch.nn.functional.pad(dots, (0, nb * bs - n), value=float("-inf"))
    expected = dots.view(2, 2, group * nb, nb, bs).logsumexp(-1)
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_the_lse_estimator_selects_from_those_logits_and_the_op_is_exact_on_its_blocks():
    from helpers import reference_for
    from pbs_tune import pbs_attention
    from pbs_tune.op.pbs_attention import key_order
    q, k, v = torch.randn(1, 4, 96, 64), torch.randn(1, 2, 96, 64), torch.randn(1, 2, 96, 64)
    out, blocks = pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.7, estimator="lse",
                                tail_blocks=0, column_blocks=0, return_blocks=True)
    perm = key_order(q, k, v, block_size=16, segment_size=32)
    assert torch.allclose(out.double(), reference_for(q, perm, blocks), atol=1e-4)
    mean = select_blocks(q, perm.k, perm.positions, block_size=16, segment_size=32, threshold=0.7, scale=0.125)
    lse = select_blocks(q, perm.k, perm.positions, block_size=16, segment_size=32, threshold=0.7, scale=0.125,
                        estimator="lse")
    assert torch.equal(lse.to_dense(), blocks.to_dense()) and mean.count.shape == lse.count.shape
    with pytest.raises(ValueError, match="estimator must be one of mean, lse, got 'max'"):
        pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.7, estimator="max")


@pytest.mark.parametrize("bisect", [False, True], ids=["sort", "bisect"])
def test_the_lse_threshold_is_of_the_mass_outside_the_sink_block(bisect, monkeypatch):
    """A head whose mean queries put nearly all their mass on key 0: the sink block, kept anyway,
    does not count, so the threshold picks from the other blocks' mass as if the sink were absent."""
    from pbs_tune.kernels.block_scores import block_lse
    monkeypatch.setattr(selection, "BISECT_FROM", 1 if bisect else 1 << 30)
    n, bs, seg, hq, thr = 160, 16, 32, 4, 0.8
    q, k = torch.randn(1, hq, n, 64), torch.randn(1, 2, n, 64)
    sink_dir = torch.randn(64)
    q += sink_dir
    k[:, :, 0] = 4 * sink_dir
    pos = torch.arange(n, dtype=torch.int32).expand(1, 2, n).contiguous()
    blocks = select_blocks(q, k, pos, block_size=bs, segment_size=seg, threshold=thr, scale=0.125, estimator="lse")
    kept = _kept_sets(blocks)
    nb = n // bs
    logits = block_lse(block_means(q, bs).view(1, 2, (hq // 2) * nb, 64), k, block_size=bs,
                       scale=0.125).view(1, hq, nb, nb).double()
    for h in range(hq):
        for i in range(4, nb):
            first = (i // 2) * 2
            assert torch.softmax(logits[0, h, i, :first], -1)[0] > 0.9  # the sink holds the row's mass
            want, cands = set(range(first, i + 1)) | {0}, list(range(1, first))
            want |= _heaviest_reaching(logits[0, h, i, cands], cands, thr)
            assert kept[0][h][i] == want, (h, i)
            assert len(want) > i - first + 2  # more than the diagonal and the sink
