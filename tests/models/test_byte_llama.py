"""The long-context fixture: needles, the byte tokenizer, training (tiny, CPU), and the
committed trained model under capture and apply (a few layers, short sequences, interpreter)."""
import json
import os

import numpy as np
import pytest
import torch

import pbs_tune
from pbs_tune.profile import profiles
from pbs_tune.models import byte_llama
from pbs_tune.models.byte_llama import ByteTokenizer, needle_prompts, needle_sequence

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "byte-llama")
TEXT = np.frombuffer(("def f(x):\n    return x * 2\n" * 400).encode(), dtype=np.uint8)


def test_training_needles_ask_every_key_and_have_the_exact_length():
    rng = np.random.default_rng(1)
    seq, answer = needle_sequence(rng, TEXT, 2048, keys=4)
    assert len(seq) == 2048 and answer is None
    text = seq.decode()
    lines = [line for line in text.split("\n") if line.startswith("# ") and " = " in line]
    pairs = [tuple(line[2:].split(" = ")) for line in lines]
    assert len(pairs) == 8 and sorted(pairs[:4]) == sorted(pairs[4:])  # 4 hidden, the same 4 asked
    assert text.endswith(f"# {pairs[-1][0]} = {pairs[-1][1]}\n")


def test_evaluation_prompts_hide_the_asked_key_at_its_depth():
    prompts = needle_prompts(TEXT, 10, 4096, seed=3)
    assert prompts[0][2] == 0.1 and prompts[4][2] == 0.9
    for ids, answer, depth in prompts:
        text = ByteTokenizer().decode(ids)
        assert len(ids) == 4096 and len(answer) == 5 and answer.isdigit()
        name = text.rsplit("\n# ", 1)[1][:-2]
        assert text.endswith(f"# {name} =") and text.count(f"# {name} = {answer}\n") == 1
        at = text.index(f"# {name} = {answer}") / len(text)
        assert abs(at - depth) < 0.02
    again = needle_prompts(TEXT, 10, 4096, seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(prompts, again))


def test_byte_tokenizer_round_trips_utf8():
    tok = ByteTokenizer()
    text = "naïve = 'π'\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok(text, return_tensors="pt").input_ids.shape == (1, len(text.encode()))


def test_training_writes_a_loadable_fixture(tmp_path):
    from pbs_tune.models.fixtures import load_model
    from pbs_tune.models.train_fixture import parse_phases, train
    assert parse_phases("256:3,512:2") == [(256, 3), (512, 2)]
    with pytest.raises(ValueError, match="length:steps"):
        parse_phases("256")
    facts = train(str(tmp_path), [(256, 3), (512, 2)], tokens_per_step=1024, layers=1, hidden=64, intermediate=128,
                  heads=4, kv_heads=2, head_dim=32, text_limit=4 << 20, device="cpu", probe_count=2, warmup=2)
    assert facts["steps_done"] == 5 and facts["trained_lengths"] == [256, 512]
    log = [json.loads(line) for line in open(tmp_path / "training_log.jsonl")]
    assert [row["phase_end"] for row in log if "phase_end" in row] == [256, 512]
    manifest = json.load(open(tmp_path / "data_manifest.json"))
    assert manifest["train"]["bytes_used"] > 0 and set(manifest) >= {"train", "calibration", "evaluation"}
    assert not set(manifest["train"]["packages"]) & set(manifest["evaluation"]["packages"])
    model, tok = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert isinstance(tok, ByteTokenizer) and model.config.num_attention_heads == 4


def test_the_committed_fixture_is_what_its_files_say():
    facts = byte_llama.read_marker(FIXTURE)
    assert facts["trained_lengths"][-1] == 32768 and facts["training_seconds"] <= 12 * 60
    assert os.path.getsize(os.path.join(FIXTURE, "model.safetensors")) <= 50e6
    cfg = json.load(open(os.path.join(FIXTURE, "config.json")))
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 2, 128)


def _fixture_layers(n):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32, num_hidden_layers=n).eval()


def test_capture_reads_the_trained_fixture(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from pbs_tune.cli import main
    (tmp_path / "code.py").write_text("import os\n\n\ndef main():\n    print(os.getcwd())\n" * 20)
    res = CliRunner().invoke(main, ["capture", "--model", FIXTURE, "--text", str(tmp_path / "code.py"),
                                    "--seqlen", "192", "--layers", "0,7", "--out", str(tmp_path / "c.safetensors")])
    assert res.exit_code == 0, res.output
    t = load_file(str(tmp_path / "c.safetensors"))
    assert sorted(t) == [f"layer{i:03d}.{n}" for i in (0, 7) for n in "kqv"]
    assert t["layer007.q"].shape == (8, 192, 128) and t["layer007.k"].shape == (2, 192, 128)


def _entry(threshold, layers=None):
    return profiles.ProfileEntry(gpu="cpu", seqlen=64, heads=8, kv_heads=2, head_dim=128, dtype="float32",
                                 params=profiles.PbsParams(16, 32, threshold),
                                 launch=profiles.LaunchConfig(16, 16, 4, 1), layers=layers or {})


def test_apply_runs_the_trained_fixture_exactly_at_threshold_one_and_per_layer_choices():
    model = _fixture_layers(2)
    ids = torch.tensor([list(b"def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n" * 2)])[:, :112]
    with torch.no_grad():
        want = model(ids, labels=ids)
    pbs_tune.reset_stats()
    pbs_tune.apply(model, profiles.Profile(path="<t>", entries=[_entry(1.0)], gpu="cpu"))
    with torch.no_grad():
        got = model(ids, labels=ids)
    assert torch.allclose(got.logits, want.logits, atol=2e-3, rtol=1e-3)
    assert pbs_tune.stats() == {"pbs": 2}
    per_head = (0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 1.0)
    layers = {0: (profiles.PbsParams(16, 32, per_head, False), profiles.LaunchConfig(16, 16, 4, 1))}
    pbs_tune.apply(model, profiles.Profile(path="<t>", entries=[_entry(0.9, layers)], gpu="cpu"))
    with torch.no_grad():
        sparse = model(ids, labels=ids)
    assert torch.isfinite(sparse.logits).all()
    assert abs(float(sparse.loss) - float(want.loss)) < 0.25 * float(want.loss)
