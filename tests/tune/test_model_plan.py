"""Model-level plans: the retrieval probe shrinks the margin while the plans lose probes, and
`pbs-tune plan` writes a plan per layer for a (tiny, byte-level) model."""
from types import SimpleNamespace

import torch
from click.testing import CliRunner

from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.profile import profiles
from pbs_tune.tune import model_plan
from pbs_tune.tune.allocate import GRID, REFERENCE_VARIANT, HeadCurves, Variant


def _curves():
    g = len(GRID)
    err = torch.linspace(0.2, 0.0, g, dtype=torch.float64).expand(2, g).clone()
    kept = torch.linspace(10, 100, g, dtype=torch.float64).expand(2, g).clone()
    hits = torch.full((2, g), 8.0, dtype=torch.float64)
    c = HeadCurves(GRID, err, kept, torch.ones(2, dtype=torch.float64), hits)
    return {0: {REFERENCE_VARIANT: c, Variant(False): c}}


def test_the_margin_shrinks_until_the_plans_answer_as_many_probes(monkeypatch):
    answers = iter([10, 7, 9, 10, 0])  # reference, then margins 0.95, 0.8, 0.6 (stops there)
    applied = []
    monkeypatch.setattr(model_plan, "probe_hits", lambda model, tok, prompts: next(answers))
    monkeypatch.setattr(model_plan, "use_entry", lambda model, entry: applied.append(entry))
    model = SimpleNamespace(config=SimpleNamespace(num_attention_heads=2, num_key_value_heads=1, head_dim=64),
                            parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))
    prompts = [(torch.zeros(8192 - 512), "12345", 0.5)] * 40
    entry, plans, used, log = model_plan.probed_plans(
        model, None, _curves(), prompts, margin=0.95, reference=0.9, block_size=128, segment_size=256,
        launch=LaunchConfig(128, 128, 8, 3), min_len=8192)
    assert [row.get("margin") for row in log] == [None, 0.95, 0.8, 0.6]
    assert [row["hits"] for row in log] == [10, 7, 9, 10]
    assert used == 0.6 and len(applied) == 5 and applied[-1] is entry
    # the probes ran PBS: every entry they ran under starts at their length, not above it
    assert [e.seqlen for e in applied[:-1]] == [8192 - 512] * 4 and entry.seqlen == 8192
    assert applied[-2].layers == entry.layers
    kept = [row["mean_kept_ratio"] for row in log[1:]]
    assert kept == sorted(kept)  # a tighter bound keeps more blocks
    params, _ = entry.layers[0]
    assert len(params.threshold) == 2 and entry.seqlen == 8192 and entry.dtype == "bfloat16"


def test_plan_command_writes_a_plan_per_layer(tmp_path):
    import transformers  # a dependency of pbs-tune: never skipped
    from pbs_tune.cli import main
    from pbs_tune.models.byte_llama import MARKER, model_config
    cfg = model_config(layers=1, hidden=64, intermediate=128, heads=2, kv_heads=1, head_dim=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / MARKER).write_text("{}")
    (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 120)
    res = CliRunner().invoke(main, ["plan", "--model", str(tmp_path / "model"), "--text", str(tmp_path / "code.py"),
                                    "--seqlen", "128", "--block-size", "32", "--segment-size", "64", "--probes", "1",
                                    "--dtype", "float32", "--profile", str(tmp_path / "cpu.yaml"),
                                    "--estimators", "mean"])  # lse plans: tests/tune/test_cli.py
    assert res.exit_code == 0, res.output
    (e,) = profiles.load(str(tmp_path / "cpu.yaml")).entries
    assert (e.heads, e.kv_heads, e.head_dim, e.seqlen, e.dtype) == (2, 1, 64, 128, "float32")
    assert sorted(e.layers) == [0]
    for params, _ in e.layers.values():
        assert len(params.threshold) == 2 and params.block_size == 32
    assert e.provenance.plan["probe"][0]["prompts"] == 1 and e.provenance.plan["margin_used"] <= 0.95
    assert "layer" in res.output
