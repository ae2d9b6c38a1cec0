"""Retrieval prompts and their scoring: what output error alone does not see.

SmolLM2 (and any model with a tokenizer): a passkey ('The secret key is 12345.') hidden at a
depth of code, asked for at the end. The byte-level fixture: its trained key-value needles with
distractors (models/byte_llama.py). A prompt is (ids, answer, depth); a hit is a greedy
continuation containing the answer. The judge's tasks (`task_prompts`): single needle, multi-key
needle and variable tracking in code, scored as a user's `generate` answers them
(`generated_matches`: the prompt prefilled alone, the answer decoded from the KV cache) or, for
comparison, teacher-forced (`teacher_forced_matches`: prompt and answer in one forward).
"""
import inspect
import random
from typing import NamedTuple

import numpy as np
import torch

from .byte_llama import ByteTokenizer, needle_prompts
from .fixtures import head_dim_of

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def passkey_prompts(tokenizer, haystack_ids, n, length, seed=0):
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        key = f"{rng.randrange(10000, 99999)}"
        needle = tokenizer(f"\n# The secret key is {key}. Remember it.\n")["input_ids"]
        question = tokenizer("\n# What is the secret key? The secret key is")["input_ids"]
        start = rng.randrange(0, len(haystack_ids) - length)
        body = haystack_ids[start:start + length - len(needle) - len(question)]
        cut = int(DEPTHS[i % len(DEPTHS)] * len(body))
        prompts.append((torch.tensor(body[:cut] + needle + body[cut:] + question), key, DEPTHS[i % len(DEPTHS)]))
    return prompts


def retrieval_prompts(tokenizer, haystack_ids, n, length, seed=0):
    """The fixture's key-value needles (what it was trained to answer), else the passkey."""
    if isinstance(tokenizer, ByteTokenizer):
        return needle_prompts(np.asarray(haystack_ids, dtype=np.uint8), n, length, seed=seed)
    return passkey_prompts(tokenizer, haystack_ids, n, length, seed=seed)


def retrieval_answers(model, tokenizer, prompts) -> list:
    """Per prompt: does the greedy continuation contain the answer."""
    device = next(model.parameters()).device
    answers = []
    for ids, key, _ in prompts:
        with torch.no_grad():
            gen = model.generate(ids[None].to(device), max_new_tokens=7, do_sample=False, pad_token_id=0)
        answers.append(key in tokenizer.decode(gen[0, len(ids):]))
    return answers


def retrieval_hits(model, tokenizer, prompts) -> int:
    """Prompts whose greedy continuation contains the answer."""
    return sum(retrieval_answers(model, tokenizer, prompts))


# Retrieval tasks in code haystacks, after RULER's single needle, multi-key needle and variable
# tracking. The judge builds them on evaluation-split text; `plan` probes with the multi-key one on
# calibration text. A task prompt holds the exact tokens of the answer: a hit is greedy decoding
# emitting exactly them.

class TaskPrompt(NamedTuple):
    ids: torch.Tensor         # the prompt's tokens
    answer_ids: torch.Tensor  # the tokens a correct greedy answer starts with
    answer: str
    depth: float              # where the asked needle (the chain's first link) sits in the haystack


TASKS = ("single_needle", "multikey_needle", "variable_tracking")
_QUESTION = "\n# Question: {q}\n# Answer:{a}"


def _name(rng, prefix):
    return prefix + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))


def _needles(task, rng):
    """(lines to hide as [(text, depth offset or None for a random depth)], question, answer)."""
    value = f"{rng.randrange(10000, 99999)}"
    if task == "single_needle":
        name = _name(rng, "svc_")
        return ([(f"\n# The pass code of the {name} service is {value}.\n", 0.0)],
                _QUESTION.format(q=f"what is the pass code of the {name} service?",
                                 a=f" the pass code of the {name} service is"), value)
    if task == "multikey_needle":
        names = [_name(rng, "svc_") for _ in range(4)]
        values = [value] + [f"{rng.randrange(10000, 99999)}" for _ in range(3)]
        lines = [(f"\n# The pass code of the {n} service is {v}.\n", 0.0 if i == 0 else None)
                 for i, (n, v) in enumerate(zip(names, values))]
        return (lines, _QUESTION.format(q=f"what is the pass code of the {names[0]} service?",
                                        a=f" the pass code of the {names[0]} service is"), value)
    if task == "variable_tracking":
        names = [_name(rng, "var_") for _ in range(4)]
        lines = [(f"\n{names[0]} = {value}\n", 0.0)] + [(f"\n{b} = {a}\n", 0.02 * i)
                                                      for i, (a, b) in enumerate(zip(names, names[1:]), 1)]
        return (lines, _QUESTION.format(q=f"after the assignments above, which number does {names[-1]} hold?",
                                        a=f" {names[-1]} holds"), value)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def task_prompts(task, tokenizer, haystack_ids, n, length, seed=0, depths=DEPTHS) -> list:
    """`n` prompts of `task`, depths in turn, each exactly `length` tokens together with its answer
    but the answer's last token (the tokens the teacher-forced forward runs): prompts whose answers
    tokenize alike are equally long, and `generated_matches` batches them."""
    rng = random.Random(f"{task}:{seed}")
    prompts = []
    for i in range(n):
        depth = depths[i % len(depths)]
        lines, question, answer = _needles(task, rng)
        needle_ids = [tokenizer(text)["input_ids"] for text, _ in lines]
        question_ids = tokenizer(question)["input_ids"]
        answer_ids = tokenizer(f" {answer}")["input_ids"]
        size = length - sum(map(len, needle_ids)) - len(question_ids) - len(answer_ids) + 1
        if size <= 0 or len(haystack_ids) < size:
            raise ValueError(f"{length} tokens leave no room for a {task} haystack, or the text is too short")
        start = rng.randrange(0, len(haystack_ids) - size + 1)
        body = list(haystack_ids[start:start + size])
        where = [min(0.98, depth + off) if off is not None else rng.uniform(0.02, 0.98) for _, off in lines]
        for at, ids in sorted(zip((int(w * len(body)) for w in where), needle_ids), key=lambda x: -x[0]):
            body[at:at] = ids
        prompts.append(TaskPrompt(torch.tensor(body + question_ids), torch.tensor(answer_ids), answer, depth))
    return prompts


def teacher_forced_matches(model, prompts) -> list:
    """Per prompt: does greedy decoding start with the answer's tokens, decided in one forward of
    prompt + answer (but its last token): greedy decoding emits the answer iff each of its tokens is
    the most likely one after the prompt and the answer tokens before it. Not what a user gets
    under PBS: the answer's own query rows go through PBS too and shift the last block's pooled
    query (`generated_matches` is the user's score)."""
    device = next(model.parameters()).device
    hits = []
    for p in prompts:
        ids = torch.cat([p.ids, p.answer_ids[:-1]])[None].to(device)
        with torch.no_grad():
            logits = model(ids, logits_to_keep=len(p.answer_ids)).logits[0]
        hits.append(bool((logits.argmax(-1).cpu() == p.answer_ids).all()))
    return hits


# What one batched prefill may hold beside the model: the KV cache of every prompt (kept for the
# decode) and one layer's transient activations. 16 GiB (or half the GPU's free memory, if less)
# is 8 prompts of 32k for Qwen2.5-Coder-0.5B in bf16 (12 KiB of cache, 57 KiB in all per token).
PREFILL_BUDGET_BYTES = 16 << 30
MAX_BATCH = 32  # short prompts: a larger batch saves little more time


def prompts_per_prefill(config, length, dtype_bytes=2, budget_bytes=PREFILL_BUDGET_BYTES) -> int:
    """How many prompts of `length` tokens one prefill runs within `budget_bytes`: per token its
    K and V in every layer, and the most one layer holds at once (the MLP's gate, up and product;
    the residual stream and its output; q before and after RoPE and the attention's output; k and v
    twice, as projected and as rotated or permuted; the normed residual in float32)."""
    head_dim = head_dim_of(config)
    kv_dim, q_dim, hidden = config.num_key_value_heads * head_dim, config.num_attention_heads * head_dim, \
        config.hidden_size
    cache = config.num_hidden_layers * 2 * kv_dim * dtype_bytes
    activations = (3 * config.intermediate_size + 2 * hidden + 3 * q_dim + 4 * kv_dim) * dtype_bytes + 2 * hidden * 4
    return max(1, min(MAX_BATCH, budget_bytes // (length * (cache + activations))))


def default_batch(model, length) -> int:
    """`prompts_per_prefill` for this model's dtype, within half the GPU's free memory where that is
    below PREFILL_BUDGET_BYTES (the caller may hold recorded tensors, as `plan` does)."""
    weight = next(model.parameters())
    budget = PREFILL_BUDGET_BYTES
    if weight.is_cuda:
        budget = min(budget, torch.cuda.mem_get_info(weight.device)[0] // 2)
    return prompts_per_prefill(model.config, length, weight.element_size(), budget)


def _cache_keyword(model) -> str:
    """The forward's name for the KV cache: `cache` in recent transformers 5 releases (5.25 here;
    `past_key_values` is still accepted, with a deprecation warning), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_decode(model, ids, steps) -> torch.Tensor:
    """(B, steps) greedy tokens after the prompts `ids` (B, N), as `generate(do_sample=False)` makes
    them without a generation config's logits processors: one forward prefills the prompts into a
    DynamicCache (through whatever attention the model runs), then one forward per token decodes
    against it (a one-row query: `apply` runs SDPA there)."""
    from transformers import DynamicCache
    cache = {_cache_keyword(model): DynamicCache(config=model.config)}
    tokens = []
    with torch.no_grad():
        logits = model(ids, use_cache=True, logits_to_keep=1, **cache).logits[:, -1]
        for step in range(steps):
            tokens.append(logits.argmax(-1))
            if step + 1 < steps:
                logits = model(tokens[-1][:, None], use_cache=True, logits_to_keep=1, **cache).logits[:, -1]
    return torch.stack(tokens, 1).cpu()


def generated_matches(model, prompts, batch=None) -> list:
    """Per prompt: does greedy generation answer exactly the answer's tokens, as a user's `generate`
    gets it: the prompt prefilled alone, the answer decoded token by token from the KV cache.
    Prompts of one token count run `batch` at a time (default: `default_batch`)."""
    if batch is not None and batch < 1:
        raise ValueError(f"batch is a number of prompts per prefill (1 or more), got {batch}")
    device = next(model.parameters()).device
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p.ids), []).append(i)
    hits = [False] * len(prompts)
    for length, members in by_length.items():
        size = batch or default_batch(model, length)
        for start in range(0, len(members), size):
            group = [prompts[i] for i in members[start:start + size]]
            decoded = greedy_decode(model, torch.stack([p.ids for p in group]).to(device),
                                    max(len(p.answer_ids) for p in group))
            for i, row, p in zip(members[start:start + size], decoded, group):
                hits[i] = bool((row[:len(p.answer_ids)] == p.answer_ids).all())
    return hits


def probe_prompts(tokenizer, haystack_ids, n, length, seed=1) -> list:
    """What `plan` probes with: the fixture's trained needles; for a pretrained model the multi-key
    needle, since one passkey is answered at every margin (Qwen2.5-Coder at 32k: 40 of 40 while
    the judge's single needle fell from 99 to 72)."""
    if isinstance(tokenizer, ByteTokenizer):
        return retrieval_prompts(tokenizer, haystack_ids, n, length, seed=seed)
    return task_prompts("multikey_needle", tokenizer, haystack_ids, n, length, seed=seed)


def probe_hits(model, tokenizer, prompts) -> int:
    """Probes answered: task prompts scored as the judge scores them (`generated_matches`), the
    fixture's needles by generation."""
    if prompts and isinstance(prompts[0], TaskPrompt):
        return sum(generated_matches(model, prompts))
    return retrieval_hits(model, tokenizer, prompts)

