"""Runtime loader on a tiny Llama built from a config (interpreter mode, float32)."""
import logging
import os

import pytest
import torch

import pbs_tune
from pbs_tune.profile import profiles
from helpers import random_qkv, tiny_entry, tiny_llama, write_profile



entry = tiny_entry


@pytest.fixture(autouse=True)
def clean_stats():
    pbs_tune.reset_stats()


def test_apply_at_threshold_one_matches_sdpa_and_decode_falls_back(tmp_path):
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 70))
    with torch.no_grad():
        want = model(ids).logits
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [entry(32)]))
    pbs_tune.apply(model, prof)
    assert model.config._attn_implementation == "pbs"
    with torch.no_grad():
        got = model(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert pbs_tune.stats() == {"pbs": 2}
    pbs_tune.reset_stats()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 73)
    s = pbs_tune.stats()
    assert s["pbs"] == 2 and s["fallback:decode"] == 4  # 2 layers x 2 decode steps


def test_short_prompt_and_a_mask_with_holes_fall_back(tmp_path):
    model = pbs_tune.apply(tiny_llama(), pbs_tune.load_profile("auto", write_profile(tmp_path, [entry(64)])))
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 40)))
        mask = torch.ones(2, 80, dtype=torch.long)
        mask[0, 30:35] = 0  # not padding: a hole in the middle
        model(torch.randint(0, 97, (2, 80)), attention_mask=mask)
    s = pbs_tune.stats()
    assert s == {"fallback:short": 2, "fallback:mask": 2}


def test_profile_selection_by_length_and_dense_layer(tmp_path):
    path = write_profile(tmp_path, [entry(32, 0.5), entry(64, 0.7, layers={"1": "dense"}), entry(128, 0.9)])
    prof = pbs_tune.load_profile("auto", path)
    shape = dict(gpu="cpu", heads=2, kv_heads=1, head_dim=64, dtype="float32")
    assert prof.pick(31, **shape) is None
    assert prof.pick(32, **shape).params.threshold == 0.5
    assert prof.pick(127, **shape).params.threshold == 0.7
    assert prof.pick(10_000, **shape).params.threshold == 0.9
    model = pbs_tune.apply(tiny_llama(), prof)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 100)))
    assert pbs_tune.stats() == {"pbs": 1, "fallback:dense_layer": 1}


def test_standalone_attention_uses_profile_and_falls_back_when_short(tmp_path):
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [entry(32)]))
    q, k, v = torch.randn(1, 2, 50, 64), torch.randn(1, 1, 50, 64), torch.randn(1, 1, 50, 64)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(pbs_tune.tuned_attention(q, k, v, profile=prof), ref, atol=1e-5)
    assert torch.allclose(pbs_tune.tuned_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], profile=prof),
                          ref[:, :, :20], atol=1e-6)
    assert pbs_tune.stats() == {"pbs": 1, "fallback:short": 1}


def test_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(profiles.ProfileError, match="pbs-tune sweep --gpu cpu"):
        pbs_tune.load_profile("auto", str(tmp_path / "nope.yaml"))


def test_no_profile_for_the_cpu_suggests_a_sweep_the_interpreter_runs(tmp_path, monkeypatch):
    from pbs_tune.profile.target import interpreter_size_error
    from pbs_tune.profile import store
    monkeypatch.setattr(store, "stores", lambda: [("an empty store", str(tmp_path))])
    with pytest.raises(profiles.ProfileError) as err:
        pbs_tune.load_profile()
    hint = str(err.value).split("make one with: ")[1]
    assert hint.startswith("pbs-tune sweep --gpu cpu --seqlen 384 --heads 1 ")
    assert interpreter_size_error(384, 1) is None  # sizes the CLI accepts under the interpreter


def test_malformed_profile_names_the_line(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("schema_version: 1\nentries:\n  - gpu: cpu\n    seqlen: [1, 2\n")
    with pytest.raises(profiles.ProfileError, match=r"cpu.yaml:\d+"):
        pbs_tune.load_profile("auto", str(path))


def test_profile_of_an_absent_gpu_loads_as_data_and_says_it_needs_that_gpu(tmp_path):
    path = write_profile(tmp_path, [entry(32, gpu="h100-sxm")])
    prof = pbs_tune.load_profile("h100-sxm", path)  # no GPU here: data only
    assert prof.gpu == "h100-sxm" and not prof.runnable and prof.entries[0].seqlen == 32
    with pytest.raises(profiles.ProfileError, match="tuned for h100-sxm and this machine has cpu: running it needs"):
        pbs_tune.apply(tiny_llama(), prof)
    with pytest.raises(profiles.ProfileError, match="running it needs that GPU"):
        pbs_tune.tuned_attention(torch.randn(1, 2, 64, 64), torch.randn(1, 1, 64, 64), torch.randn(1, 1, 64, 64),
                                 profile=prof)
    with pytest.raises(profiles.ProfileError, match="no entries for cpu"):
        pbs_tune.load_profile("auto", path)


def _store(root, name, gpu, seqlen):
    """A store folder (configs/ + cache/) holding one profile."""
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    profiles.merge_entries(str(path), [entry(seqlen, gpu=gpu)])
    return str(path)


def test_lookup_order_explicit_then_env_then_user_then_shipped(tmp_path, monkeypatch):
    from pbs_tune.profile import store as profile_store
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PBS_TUNE_HOME", raising=False)
    shipped = profile_store.find_profile("h100-sxm")
    assert shipped.where == "shipped with pbs-tune" and not shipped.other_variant
    assert profiles.load(shipped.path).for_gpu("h100-sxm")
    user = _store(tmp_path / "xdg" / "pbs-tune", "h100-sxm", "h100-sxm", 2048)
    assert profile_store.find_profile("h100-sxm").path == user
    monkeypatch.setenv("PBS_TUNE_HOME", str(tmp_path / "home"))
    env = _store(tmp_path / "home", "h100-sxm", "h100-sxm", 4096)
    assert profile_store.find_profile("h100-sxm").path == env
    explicit = write_profile(tmp_path, [entry(8192, gpu="h100-sxm")])
    assert pbs_tune.load_profile("h100-sxm", explicit).entries[0].seqlen == 8192
    assert pbs_tune.load_profile("h100-sxm").entries[0].seqlen == 4096
    # Another variant of the family only when no store has the exact one, and said so.
    pcie = profile_store.find_profile("h100-pcie")
    assert pcie.other_variant and pcie.path == env
    assert profile_store.find_profile("a10-pcie") is None  # no profile of its family anywhere


def test_show_works_from_any_directory_for_a_gpu_that_is_not_here(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "empty"))
    env.pop("PBS_TUNE_HOME", None)
    out = subprocess.run([sys.executable, "-m", "pbs_tune", "show", "--gpu", "h200-sxm"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "h200-sxm.yaml" in out.stdout and "128k" in out.stdout


@pytest.mark.parametrize("name,variant", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200-sxm"), ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA A100-SXM4-80GB", "a100-sxm"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie"), ("NVIDIA L40S", "l40s"),
])
def test_gpu_variants_are_told_apart(name, variant):
    from pbs_tune.profile.target import variant_name
    assert variant_name(name) == variant


def _attention_call(tmp_path, entries, **kwargs):
    """One call of the registered attention function on a tiny Llama's layer 0; returns (out, want)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pbs_tune.runtime.transformers_attention import _pbs_attention_forward
    model = pbs_tune.apply(tiny_llama(), pbs_tune.load_profile("auto", write_profile(tmp_path, entries)))
    attn = model.model.layers[0].self_attn
    q, k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 1, 64, 64), torch.randn(1, 1, 64, 64)
    grad = kwargs.pop("requires_grad", False)
    if grad:
        q.requires_grad_(True)
    pbs_tune.reset_stats()
    out, _ = _pbs_attention_forward(attn, q, k, v, None, **kwargs)
    want, _ = sdpa_attention_forward(attn, q, k, v, None, **kwargs)
    return out, want


@pytest.mark.parametrize("entries,kwargs,reason", [
    ([entry(32, dense_faster=True)], {}, "dense_faster"),
    ([dict(entry(32), heads=4, head_dim=128)], {}, "untuned_shape"),
    ([entry(32)], dict(dropout=0.5), "dropout"),
    ([entry(32)], dict(sliding_window=16), "unsupported_kwargs"),
    ([entry(32)], dict(is_causal=False), "non_causal"),
    ([entry(32)], dict(requires_grad=True), "grad"),
])
def test_every_fallback_reason_runs_sdpa_and_is_counted(tmp_path, entries, kwargs, reason):
    torch.manual_seed(0)  # dropout draws the same mask in both calls
    out, want = _attention_call(tmp_path, entries, **kwargs)
    assert pbs_tune.stats() == {f"fallback:{reason}": 1}
    if not kwargs.get("dropout"):
        assert torch.allclose(out, want, atol=1e-6)


def test_soft_capping_is_never_run_as_plain_pbs(tmp_path):
    with pytest.raises(ValueError, match="softcap"):  # SDPA refuses it too: an error, not a wrong answer
        _attention_call(tmp_path, [entry(32)], softcap=30.0)
    assert pbs_tune.stats() == {"fallback:unsupported_kwargs": 1}


def test_pbs_runs_where_nothing_asks_for_a_fallback(tmp_path):
    out, want = _attention_call(tmp_path, [entry(32, threshold=1.0)])
    assert pbs_tune.stats() == {"pbs": 1}
    assert torch.allclose(out, want, atol=1e-5)


def test_the_raw_op_is_forward_only():
    q = torch.randn(1, 2, 64, 64, requires_grad=True)
    k, v = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match="forward-only"):
        pbs_tune.pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.9)
    with torch.no_grad():
        assert pbs_tune.pbs_attention(q, k, v, block_size=16, segment_size=32, threshold=0.9).shape == q.shape


def test_an_unpermuted_entry_runs_unpermuted_selection(tmp_path):
    e = entry(32, threshold=0.5)
    e["params"]["permute"] = False
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [e]))
    q, k, v = torch.randn(1, 2, 96, 64) * 2, torch.randn(1, 1, 96, 64) * 2, torch.randn(1, 1, 96, 64)
    got = pbs_tune.tuned_attention(q, k, v, profile=prof)
    args = dict(block_size=16, segment_size=32, threshold=0.5, launch=pbs_tune.LaunchConfig(16, 16, 4, 1))
    assert torch.equal(got, pbs_tune.pbs_attention(q, k, v, permute=False, **args))
    assert not torch.equal(got, pbs_tune.pbs_attention(q, k, v, permute=True, **args))


def test_a_path_in_place_of_the_gpu_is_read_as_a_path(tmp_path):
    with pytest.raises(profiles.ProfileError, match=r"no tuned profile at /nonexistent: check the path, or make one "
                                                    r"here with: pbs-tune sweep --gpu cpu --seqlen 384"):
        pbs_tune.load_profile("/nonexistent")
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "configs", "h100-sxm.yaml")
    with pytest.raises(profiles.ProfileError, match="h100-sxm.yaml has no entries for cpu"):
        pbs_tune.load_profile(shipped)  # read as the path it is, for the GPU present


def test_a_profile_not_tuned_on_its_gpu_runs_pbs_only_from_32k_and_says_why_once(tmp_path, caplog):
    from pbs_tune.runtime.entry_choice import shortest_pbs_length
    why = "not tuned on cpu: no such GPU was available"
    path = write_profile(tmp_path, [dict(entry(64), not_tuned=why), dict(entry(128), not_tuned=why)])
    with caplog.at_level(logging.WARNING, logger="pbs_tune"):
        prof = pbs_tune.load_profile(path)
    assert [r.getMessage().count(why) for r in caplog.records] == [1]
    assert "PBS runs from 32k tokens, SDPA below" in caplog.text
    assert shortest_pbs_length(prof) == profiles.UNTUNED_MIN_SEQLEN
    q, k, v = torch.randn(1, 2, 128, 64), torch.randn(1, 1, 128, 64), torch.randn(1, 1, 128, 64)
    pbs_tune.tuned_attention(q, k, v, profile=prof)
    assert pbs_tune.stats() == {"fallback:short": 1}  # 128 keys: tuned for, but below 32k
    tuned = pbs_tune.load_profile(write_profile(tmp_path, [entry(64)], name="tuned.yaml"))
    assert shortest_pbs_length(tuned) == 64
    from click.testing import CliRunner

    from pbs_tune.cli import main
    shown = CliRunner().invoke(main, ["show", "--profile", path])
    assert shown.output.count(f"NOT TUNED: {why}; the loader runs PBS from 32k tokens only") == 1


def test_the_tail_rows_attend_to_every_key_through_apply_also_in_chunks_and_padded_batches(tmp_path):
    """An entry's tail_blocks: the last query blocks of each call (each sequence of a padded batch)
    exact, the other rows PBS as without it."""
    from pbs_tune.runtime.serving import PbsServing, dense_causal

    def serving(tail):
        entry = tiny_entry(32, threshold=0.3)
        entry["params"].update(tail_blocks=tail, column_blocks=0)
        prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [entry], name=f"tail{tail}.yaml"))
        return PbsServing(prof, 32, min_chunk=1, cuda_graphs=False)

    def run_tail(tail, padding=None):
        return serving(tail).run(q, k, v, layer_idx=0, padding=padding, dense=lambda: pytest.fail("PBS did not run"))
    q, k, v = random_qkv(2, 2, 1, 96, 64, n_keys=160)  # a chunk of 96 queries after a 64-key prefix
    exact = dense_causal(q, k, v, None)
    pbs = run_tail(0)
    tail = run_tail(2)  # blocks of 16: the last 32 rows
    assert torch.allclose(tail[:, :, -32:], exact[:, :, -32:], atol=1e-5)
    assert not torch.allclose(pbs[:, :, -32:], exact[:, :, -32:], atol=1e-3)  # threshold 0.3 drops mass there
    padding = torch.ones(2, 160, dtype=torch.bool)
    padding[1, :70] = False  # the second sequence starts inside the chunk: its own rows only
    tail = run_tail(2, padding)
    own = dense_causal(q[1:, :, 6:], k[1:, :, 70:], v[1:, :, 70:], None)
    # its 90 keys make 6 blocks of 16: the last two hold its last 26 rows
    assert torch.allclose(tail[1:, :, -26:], own[:, :, -26:], atol=1e-5) and not tail[1:, :, :6].any()
    assert torch.allclose(tail[:1, :, -32:], exact[:1, :, -32:], atol=1e-5)


def test_tuned_attention_keeps_plans_for_a_few_profiles_only(tmp_path):
    """A server that reloads its profile does not keep every earlier one alive through its plans."""
    import gc
    import weakref

    from pbs_tune.runtime.serving import MAX_SERVINGS
    from pbs_tune.runtime.state import STATE
    q, k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 1, 64, 64), torch.randn(1, 1, 64, 64)
    refs = []
    for i in range(MAX_SERVINGS + 2):
        prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [tiny_entry(32)], name=f"p{i}.yaml"))
        pbs_tune.tuned_attention(q, k, v, profile=prof)
        refs.append(weakref.ref(prof))
        del prof
    gc.collect()
    assert len(STATE.servings) <= MAX_SERVINGS and refs[0]() is None


def test_a_model_plans_each_shape_once_and_keeps_a_bounded_number_of_plans(tmp_path, monkeypatch):
    from pbs_tune.runtime import serving as serving_module
    from pbs_tune.runtime.entry_choice import Choice
    prof = pbs_tune.load_profile("auto", write_profile(tmp_path, [tiny_entry(32), tiny_entry(64, threshold=0.5)]))
    serving = serving_module.PbsServing(prof, cuda_graphs=False)
    q, k = torch.randn(1, 2, 80, 64), torch.randn(1, 1, 80, 64)
    first = serving.plan(q, k, 0)
    assert serving.plan(q, k, 0) is first and first.params.threshold == 0.5  # 80 keys: the 64 entry
    assert serving.plan(q[:, :, :20], k[:, :, :40], 0) == Choice(fallback="short_chunk")  # 20 queries after 20
    monkeypatch.setattr(serving_module, "MAX_PLANS", 3)
    for n in range(40, 50):
        serving.plan(q[:, :, :n], k[:, :, :n], 0)
    assert len(serving._choices) <= 3
