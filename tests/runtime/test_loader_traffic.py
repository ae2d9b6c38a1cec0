"""The loader on serving traffic: padded batches, chunked prefill against a cache, other shapes
(tiny Llama, interpreter mode, float32; threshold 1 so that PBS must equal dense attention)."""
import logging

import pytest
import torch
import transformers

import pbs_tune
from helpers import tiny_entry as entry
from helpers import tiny_llama, write_profile



@pytest.fixture(autouse=True)
def clean_stats():
    pbs_tune.reset_stats()


def applied(tmp_path, entries, **kwargs):
    dense = tiny_llama()
    model = tiny_llama()
    model.load_state_dict(dense.state_dict())
    return dense, pbs_tune.apply(model, pbs_tune.load_profile("auto", write_profile(tmp_path, entries)), **kwargs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_runs_pbs_per_sequence_and_matches_sdpa(tmp_path, side):
    dense, model = applied(tmp_path, [entry(48)])
    ids = torch.randint(0, 97, (3, 90))
    mask = torch.ones(3, 90, dtype=torch.long)
    pad = {0: 7, 1: 0, 2: 60}  # sequence 2 keeps 30 tokens: too short for the 48-token entry
    for b, n in pad.items():
        if n:
            mask[b, :n] = 0 if side == "left" else 1
            if side == "right":
                mask[b] = 0
                mask[b, :90 - n] = 1
    with torch.no_grad():
        want = dense(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
    assert pbs_tune.stats() == {"pbs": 4, "fallback:short": 2}  # 2 layers x (2 long + 1 short sequence)


def test_padded_generate_gives_the_dense_tokens(tmp_path):
    dense, model = applied(tmp_path, [entry(32)])
    ids = torch.randint(0, 97, (2, 70))
    mask = torch.ones(2, 70, dtype=torch.long)
    mask[1, :9] = 0
    args = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **args), dense.generate(ids, **args))
    s = pbs_tune.stats()
    assert s["pbs"] == 4 and s["fallback:decode"] == 6  # prefill 2 layers x 2 sequences; 3 decode steps


def test_chunked_prefill_keeps_a_prefix_state_per_layer_beside_the_cache_and_matches_dense(tmp_path):
    import gc

    from pbs_tune.runtime.transformers_attention import serving_of
    dense, model = applied(tmp_path, [entry(32)], min_chunk=16)
    held = serving_of(model).prefixes
    ids = torch.randint(0, 97, (1, 151))
    cache = transformers.DynamicCache()

    def lengths():
        return [getattr(held.get(cache, (layer, None)), "length", None) for layer in (0, 1)]
    with torch.no_grad():
        want = dense(ids).logits
        parts = [model(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in ((0, 40), (40, 100))]
        assert lengths() == [100, 100]  # one state per layer, extended by each chunk
        parts.append(model(ids[:, 100:108], past_key_values=cache, use_cache=True).logits)  # 8 queries: dense
        assert lengths() == [None, None]  # a call that does not extend a state drops it
        parts.append(model(ids[:, 108:150], past_key_values=cache, use_cache=True).logits)  # rebuilt at once
        assert lengths() == [150, 150]
        other = transformers.DynamicCache()  # a second conversation through the same model
        model(ids[:, :40], cache=other, use_cache=True)
        assert held.held() == 4
        parts.append(model(ids[:, 150:], past_key_values=cache, use_cache=True).logits)  # a decode step
    assert torch.allclose(torch.cat(parts, 1), want, atol=1e-4, rtol=1e-4)
    # chunk 1 (40 keys), chunk 2 (100 keys), chunk 4 (150 keys) and the other prompt in PBS
    assert pbs_tune.stats() == {"pbs": 8, "fallback:short_chunk": 2, "fallback:decode": 2}
    assert held.held() == 2 and lengths() == [None, None]
    del other
    gc.collect()
    assert held.held() == 0  # freed with the cache


def test_a_padded_batch_keeps_one_state_per_sequence_holding_its_keys_if_asked(tmp_path):
    from pbs_tune.runtime.transformers_attention import serving_of
    dense, model = applied(tmp_path, [entry(32)], min_chunk=16, prefix_keys=True)
    held = serving_of(model).prefixes
    ids = torch.randint(0, 97, (2, 90))
    mask = torch.ones(2, 90, dtype=torch.long)
    mask[0, :6] = 0  # left padding
    cache = transformers.DynamicCache()
    with torch.no_grad():
        want = dense(ids, attention_mask=mask).logits
        parts = [model(ids[:, a:b], attention_mask=mask[:, :b], cache=cache, use_cache=True).logits
                 for a, b in ((0, 50), (50, 90))]
    got = torch.cat(parts, 1)
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)
    assert held.held() == 4  # 2 layers x 2 sequences
    first, second = held.get(cache, (0, 0, 6)), held.get(cache, (0, 1, 0))
    assert (first.length, second.length) == (84, 90) and first.k is not None and first.k.shape[0] == 1


def test_a_short_chunk_falls_back_with_the_right_causal_mask(tmp_path):
    dense, model = applied(tmp_path, [entry(32)])  # no measured crossover: chunks under MIN_CHUNK are short
    ids = torch.randint(0, 97, (2, 80))
    mask = torch.ones(2, 80, dtype=torch.long)
    mask[0, :6] = 0
    cache = transformers.DynamicCache()
    with torch.no_grad():
        want = dense(ids, attention_mask=mask).logits
        first = model(ids[:, :50], attention_mask=mask[:, :50], past_key_values=cache, use_cache=True).logits
        second = model(ids[:, 50:], attention_mask=mask, past_key_values=cache, use_cache=True).logits
    got = torch.cat([first, second], 1)
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)
    assert pbs_tune.stats() == {"pbs": 4, "fallback:short_chunk": 4}  # per sequence of the padded batch


def test_a_shape_without_entries_uses_the_nearest_gqa_ratio_once_said(tmp_path, caplog):
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [
        dict(entry(32, 0.5), heads=8, kv_heads=2), dict(entry(32, 0.7), heads=8, kv_heads=1),
        dict(entry(32, 0.9), heads=8, kv_heads=8), dict(entry(32, 0.6), heads=4, kv_heads=2, head_dim=128)]))
    shape = dict(gpu="cpu", head_dim=64, dtype="float32")
    with caplog.at_level(logging.WARNING, logger="pbs_tune"):
        assert prof.pick(64, heads=28, kv_heads=4, nearest=True, **shape).params.threshold == 0.7  # 7 -> 8
        assert prof.pick(64, heads=28, kv_heads=4, nearest=True, **shape).params.threshold == 0.7
        assert prof.pick(64, heads=6, kv_heads=3, nearest=True, **shape).params.threshold == 0.5   # 2 -> 4
        assert prof.pick(64, heads=4, kv_heads=4, nearest=True, **shape).params.threshold == 0.9   # 1 -> 1
        assert prof.pick(64, heads=8, kv_heads=2, nearest=True, **shape).params.threshold == 0.5   # its own
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and "28/4" in said[0] and "nearest tuned shape 8/1" in said[0]
    assert prof.pick(64, heads=28, kv_heads=4, **shape) is None  # only with nearest
    assert prof.pick(64, heads=2, kv_heads=1, gpu="cpu", head_dim=32, dtype="float32", nearest=True) is None


def test_tuned_attention_takes_a_chunk_after_a_prefix(tmp_path):
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [entry(32, 1.0)]))
    q, k, v = torch.randn(1, 2, 40, 64), torch.randn(1, 1, 100, 64), torch.randn(1, 1, 100, 64)
    from pbs_tune.runtime.serving import dense_causal
    got = pbs_tune.tuned_attention(q, k, v, profile=prof)
    assert pbs_tune.stats() == {"fallback:short_chunk": 1}  # 40 < the default min_chunk
    assert torch.allclose(got, dense_causal(q, k, v, None), atol=1e-5)


def test_generate_with_chunked_prefill_gives_the_dense_tokens(tmp_path):
    if not hasattr(transformers.GenerationConfig(), "prefill_chunk_size"):
        pytest.skip(f"transformers {transformers.__version__} has no chunked prefill in generate")
    dense, model = applied(tmp_path, [entry(32)], min_chunk=16)
    ids = torch.randint(1, 97, (1, 130))  # no pad token (0) inside: generate would mask it
    args = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)  # no early end-of-text
    with torch.no_grad():
        want = dense.generate(ids, **args)
        got = model.generate(ids, prefill_chunk_size=48, **args)
    assert torch.equal(got, want)
    s = pbs_tune.stats()
    assert s["pbs"] == 6 and s["fallback:decode"] == 4  # chunks of 48, 48, 34 queries x 2 layers
    import gc

    from pbs_tune.runtime.transformers_attention import serving_of
    gc.collect()
    assert serving_of(model).prefixes.held() == 0  # generate's cache is gone, and the states with it


@pytest.mark.parametrize("args,says", [
    (["--shape", "28/4/128", "--seqlen", "40k"], ["entries of 32/8/128 (nearest GQA ratio)", "from 32k tokens"]),
    (["--shape", "32/8/128"], ["its own entries", "from 128k tokens"]),
    (["--shape", "9/3/64"], ["its own entries", "dense faster: SDPA"]),
    (["--shape", "8/2/96"], ["no entry of head_dim 96", "runs SDPA"]),
    (["--shape", "8/2/128", "--seqlen", "1k"], ["below the smallest tuned length"]),
])
def test_show_says_which_entries_a_model_shape_runs(args, says):
    from click.testing import CliRunner

    from pbs_tune.cli import main
    out = CliRunner().invoke(main, ["show", "--gpu", "h200-sxm"] + args)
    assert out.exit_code == 0, out.output
    for text in says:
        assert text in out.output


def test_show_refuses_a_malformed_shape_in_one_line():
    from click.testing import CliRunner

    from pbs_tune.cli import main
    out = CliRunner().invoke(main, ["show", "--gpu", "h200-sxm", "--shape", "9/2/64"])
    assert out.exit_code != 0 and out.output.count("\n") == 1 and "multiple of KV_HEADS" in out.output


def test_padding_spans_are_read_once_per_mask_object_and_again_for_a_new_or_changed_one(tmp_path):
    from pbs_tune.runtime.serving import PbsServing
    padded_spans = PbsServing(pbs_tune.load_profile("auto", write_profile(tmp_path, [entry(32)]))).padded_spans
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    assert padded_spans(mask) == [(3, 10), (0, 10)]
    assert padded_spans(mask) == [(3, 10), (0, 10)]
    mask[1, 8:] = 0                      # changed in place: read again
    assert padded_spans(mask) == [(3, 10), (0, 8)]
    other = torch.ones(2, 10, dtype=torch.long)
    other[1, 4] = 0                      # another object with a hole
    assert padded_spans(other) is None
