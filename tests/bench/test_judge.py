"""The real-model judge (bench/judge.py) and its retrieval tasks (models/retrieval.py), on a tiny
byte-level model in the interpreter."""
import dataclasses
import json

import pytest
import torch
import transformers

from helpers import tiny_llama, tiny_llama_config
from pbs_tune.bench import judge
from pbs_tune.models.byte_llama import MARKER, ByteTokenizer
from pbs_tune.models.retrieval import TASKS, TaskPrompt, generated_matches, task_prompts, teacher_forced_matches
from pbs_tune.profile import profiles
from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.profile.params import PbsParams
from pbs_tune.tune.model_plan import model_entry

HAYSTACK = list(b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40)


@pytest.mark.parametrize("task", TASKS)
def test_task_prompts_hide_their_needles_and_fill_the_length_exactly(task):
    tok = ByteTokenizer()
    prompts = task_prompts(task, tok, HAYSTACK, 10, 600, seed=3)
    assert [p.depth for p in prompts] == [0.1, 0.3, 0.5, 0.7, 0.9] * 2
    for p in prompts:
        assert len(p.ids) + len(p.answer_ids) - 1 == 600  # what one scoring forward runs
        text, answer = tok.decode(p.ids), tok.decode(p.answer_ids)
        assert answer == f" {p.answer}" and p.answer.isdigit() and len(p.answer) == 5
        assert text.count(p.answer) >= 1 and text.rstrip().endswith(("is", "holds"))
        if task == "multikey_needle":
            assert text.count("# The pass code of the svc_") == 4
        if task == "variable_tracking":
            first = text.index(f" = {p.answer}\n")  # the chain's first link, then 3 links, in order
            names = [line.split(" = ")[0] for line in text[first - 9:].splitlines() if line.startswith("var_")][:4]
            assert text.rstrip().endswith(f"{names[-1]} holds") and len(set(names)) == 4
        if task != "multikey_needle":  # the asked needle (the chain's first link) at its depth of the code
            needles = "".join(line + "\n" for line in text.splitlines() if line.startswith(("# The pass", "var_")))
            body = text.rindex("\n# Question:") - len(needles) - 2 * needles.count("\n") // 2
            asked = text.index("# The pass" if task == "single_needle" else f" = {p.answer}\n")
            asked = text.rindex("\n", 0, asked) if task == "variable_tracking" else asked - 1
            assert asked == int(p.depth * (body + needles.count("\n"))) or abs(asked / body - p.depth) < 0.02
    assert task_prompts(task, tok, HAYSTACK, 3, 600, seed=3)[0].answer == prompts[0].answer  # seeded


def test_teacher_forced_matches_is_greedy_decoding_decided_in_one_forward():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=256)
    prompts = task_prompts("single_needle", ByteTokenizer(), HAYSTACK, 4, 200)
    own, wrong = [], []
    for p in prompts:
        gen = model.generate(p.ids[None], max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(p.ids):]
        own.append(TaskPrompt(p.ids, gen, "", p.depth))
        swapped = gen.clone()
        swapped[2] = (swapped[2] + 1) % 256  # greedy decoding would emit the first two tokens only
        wrong.append(TaskPrompt(p.ids, swapped, "", p.depth))
    assert teacher_forced_matches(model, own) == [True] * 4
    assert teacher_forced_matches(model, wrong) == [False] * 4


def _profile(path, entry):
    profiles.merge_entries(str(path), [entry])
    return str(path)


def test_judge_runs_every_part_through_apply_with_a_plan_that_keeps_a_layer_dense(tmp_path, monkeypatch):
    cfg = tiny_llama_config(vocab_size=256, num_hidden_layers=2, max_position_embeddings=1024)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / MARKER).write_text("{}")
    net = transformers.LlamaForCausalLM(cfg)
    launch = LaunchConfig(64, 64, 4, 1)
    shipped = model_entry(net, seqlen=256, block_size=64, segment_size=128, threshold=0.8, launch=launch)
    plan = model_entry(net, seqlen=256, block_size=64, segment_size=128, threshold=0.9, launch=launch,
                       layers={0: profiles.DENSE, 1: (PbsParams(64, 128, (0.7, 0.95), False, "lse"), launch)})
    out = tmp_path / "judge.json"
    written, write_json = [], judge.write_json  # the parts in the file each time: a stopped run keeps those done

    def write_and_note(path, res):
        written.append([sorted(k for k in ("loss", "retrieval", "layers") if k in n) for n in res["lengths"]])
        write_json(path, res)
    monkeypatch.setattr(judge, "write_json", write_and_note)
    # Every forward runs in the interpreter, the permutation stage slowest: the plan (one layer
    # dense, one unpermuted) runs every part; the paper, default and shipped profiles are made and read.
    judge.main(["--model", str(tmp_path / "model"), "--lengths", "384", "--sequences", "2", "--prompts", "2",
                "--batch", "2", "--teacher-forced", "--variants", "plan", "--plan",
                _profile(tmp_path / "plan.yaml", plan), "--dtype", "float32",
                "--out", str(out), "--parts", "loss,retrieval,layers"])  # prefill: below
    assert written == [[["loss"]], [["loss", "retrieval"]], [["layers", "loss", "retrieval"]]]
    (res,) = json.loads(out.read_text())["lengths"]
    assert res["tokens"] == 384 and "dense layers [0]" in res["entries"]["plan"]
    assert list(res["entries"]) == ["dense", "plan"]
    profs = judge.variant_profiles(net, ["dense", "paper", "default", "shipped"], plan=None, min_len=256,
                                   shipped=_profile(tmp_path / "shipped.yaml", shipped))
    assert list(profs) == ["dense", "paper", "default", "shipped"] and profs["dense"] is None
    assert "b64 s128 τ0.8" in judge.picked(profs["shipped"], net, 384)
    assert "256 2/1/64 float32 b128 s256 τ0.9" in judge.picked(profs["default"], net, 384)
    # default: the paper's block, segment and threshold with the retrieval knobs as `apply` runs them
    assert profs["default"].entries[0].params == PbsParams(128, 256, 0.9)
    assert profs["paper"].entries[0].params == dataclasses.replace(PbsParams(128, 256, 0.9), **judge.PAPER_KNOBS)
    assert judge.PAPER_KNOBS == dict(tail_blocks=0, column_blocks=0)
    loss = res["loss"]
    assert loss["plan_relative"]["mean"] == pytest.approx(
        sum(a / b - 1 for a, b in zip(loss["per_sequence"]["plan"], loss["per_sequence"]["dense"])) / 2)
    for task in TASKS:
        row = res["retrieval"][task]
        assert row["dense"]["prompts"] == 2 and "points_vs_dense" not in row["dense"]
        # both prompts in one prefill (layer 0 dense), then 5 decode steps of the 6 answer tokens per layer
        assert row["plan"]["stats"] == {"pbs": 1, "fallback:dense_layer": 1, "fallback:decode": 10}
        forced = (row["plan"]["teacher_forced"], row["dense"]["teacher_forced"])
        for scored, dense in ((row["plan"], row["dense"]), forced):
            diffs = [100 * (a - b) for a, b in zip(scored["hits"], dense["hits"])]
            assert scored["points_vs_dense"]["mean"] == pytest.approx(sum(diffs) / 2)
            lo, hi = scored["points_vs_dense"]["ci95"]
            assert lo <= scored["points_vs_dense"]["mean"] <= hi
    layer0, layer1 = res["layers"]
    assert layer0["plan"]["dense"] is True and (layer0["plan"]["density"], layer0["plan"]["rel_l2"]) == (1.0, 0.0)
    assert layer1["plan"]["params"]["threshold"] == [0.7, 0.95] and 0 < layer1["plan"]["density"] <= 1
    use = judge.Variants(net.eval(), {"dense": None, "plan": profiles.load(str(tmp_path / "plan.yaml"))})
    prefill = judge.part_prefill(net, use, torch.arange(384) % 256)
    assert prefill["plan_stats"]["pbs"] == prefill["plan_stats"]["fallback:dense_layer"] > 0 < prefill["plan_ms"]
    assert net.config._attn_implementation == "sdpa"  # dense again afterwards


class _Chars:
    """A tokenizer that is not the byte fixture's: one id per character."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_plan_probes_a_pretrained_model_with_the_multikey_needle_and_the_fixture_with_its_own():
    from pbs_tune.models.retrieval import probe_hits, probe_prompts
    prompts = probe_prompts(_Chars(), HAYSTACK, 3, 600)
    assert all(isinstance(p, TaskPrompt) for p in prompts)
    assert ByteTokenizer().decode(prompts[0].ids).count("# The pass code of the svc_") == 4
    fixture = probe_prompts(ByteTokenizer(), HAYSTACK, 3, 600)
    assert not isinstance(fixture[0], TaskPrompt) and len(fixture[0]) == 3  # (ids, answer, depth)
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=256)
    assert probe_hits(model, _Chars(), prompts) == sum(generated_matches(model, prompts))


@pytest.mark.parametrize("args, said", [
    (["--parts", "loss,speed"], "--parts 'loss,speed': give some of loss, retrieval, prefill, layers"),
    (["--lengths", "32q"], "--lengths: bad sequence length '32q'"),
    (["--batch", "0"], "--batch must be 1 or more"),
    (["--exact-tail", "128"], "unrecognized arguments: --exact-tail 128"),
])
def test_judge_says_what_is_wrong_with_its_arguments_in_one_line(args, said, capsys):
    with pytest.raises(SystemExit) as err:
        judge.main(["--variants", "paper", "--out", "x.json", *args])
    assert err.value.code == 2 and said in capsys.readouterr().err


def test_paired_points_count_only_the_prompts_where_a_variant_and_dense_differ():
    same = judge.paired_points([1, 0, 1, 1], [1, 0, 1, 1])
    assert same == dict(mean=0.0, ci95=[0.0, 0.0])
    lost = judge.paired_points([1, 0, 0, 1], [1, 1, 0, 1])  # one prompt of four lost
    assert lost["mean"] == -25.0 and lost["ci95"][0] < -25.0 < lost["ci95"][1] < 50
