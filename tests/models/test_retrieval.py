"""The generate-way retrieval score (models/retrieval.py `generated_matches`): what a user's
`generate` answers, batched, on the trained byte fixture and, through PBS, on a tiny Llama."""
import os

import pytest
import torch
import transformers

import pbs_tune
from helpers import tiny_llama
from pbs_tune.models.byte_llama import ByteTokenizer
from pbs_tune.models.retrieval import (TaskPrompt, generated_matches, greedy_decode, prompts_per_prefill,
                                       task_prompts, teacher_forced_matches)
from pbs_tune.profile import profiles

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "byte-llama")
HAYSTACK = list(b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40)


@pytest.fixture(scope="module")
def fixture_model():
    return transformers.AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()


def _with_answer(p, answer_ids):
    return TaskPrompt(p.ids, answer_ids, "", p.depth)


def test_generated_matches_is_what_generate_answers_batched_or_not(fixture_model):
    tok = ByteTokenizer()
    # Two token counts (batched apart): a needle the fixture finds, and a chain it was not trained on.
    prompts = task_prompts("single_needle", tok, HAYSTACK, 2, 192) + task_prompts("variable_tracking", tok, HAYSTACK,
                                                                                   1, 224)
    expected = []
    for group in (prompts[:2], prompts[2:]):
        ids = torch.stack([p.ids for p in group])
        gen = fixture_model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
        expected += [torch.equal(row, p.answer_ids) for row, p in zip(gen, group)]
    assert [len(p.answer_ids) for p in prompts] == [6] * 3  # " 12345"
    assert expected[:2] == [True, True]  # the trained fixture answers the single needle
    assert generated_matches(fixture_model, prompts, batch=1) == expected
    assert generated_matches(fixture_model, prompts, batch=2) == expected
    # the answer it decodes, but for its last token: a miss
    wrong = _with_answer(prompts[0], torch.cat([prompts[0].answer_ids[:-1], (prompts[0].answer_ids[-1:] + 1) % 256]))
    assert generated_matches(fixture_model, [wrong]) == [False]


def test_greedy_decode_emits_generates_tokens_for_a_batch(fixture_model):
    ids = torch.stack([p.ids for p in task_prompts("variable_tracking", ByteTokenizer(), HAYSTACK, 2, 224)])
    want = fixture_model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(greedy_decode(fixture_model, ids, 4), want)


def test_generated_matches_prefills_through_pbs_and_decodes_on_sdpa():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=256)
    entry = profiles.ProfileEntry(gpu="cpu", seqlen=64, heads=2, kv_heads=1, head_dim=64, dtype="float32",
                                  params=profiles.PbsParams(32, 64, 0.5), launch=profiles.LaunchConfig(32, 32, 4, 1))
    pbs_tune.apply(model, profiles.Profile(path="<t>", entries=[entry], gpu="cpu"))
    prompts = task_prompts("single_needle", ByteTokenizer(), HAYSTACK, 2, 192)
    ids = torch.stack([p.ids for p in prompts])
    gen = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    own = [_with_answer(p, row) for p, row in zip(prompts, gen)]  # what generate answers under PBS
    pbs_tune.reset_stats()
    assert generated_matches(model, own, batch=2) == [True, True]
    # one prefill of both prompts per layer through PBS, the two decode steps on SDPA
    assert pbs_tune.stats() == {"pbs": 2, "fallback:decode": 4}
    pbs_tune.reset_stats()
    teacher_forced_matches(model, own[:1])
    assert pbs_tune.stats() == {"pbs": 2}  # teacher-forced: the answer's rows through PBS, no decode step


def test_prompts_per_prefill_fits_qwen_coder_at_32k_into_a_batch_of_8():
    qwen = transformers.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                    num_attention_heads=14, num_key_value_heads=2)
    assert [prompts_per_prefill(qwen, n) for n in (32768, 65536, 131072)] == [8, 4, 2]
    assert prompts_per_prefill(qwen, 1 << 24) == 1  # never none
