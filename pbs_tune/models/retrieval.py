"""Retrieval prompts and their scoring: what output error alone does not see.

SmolLM2 (and any model with a tokenizer): a passkey ('The secret key is 12345.') hidden at a
depth of code, asked for at the end. The byte-level fixture: its trained key-value needles with
distractors (models/byte_llama.py). A prompt is (ids, answer, depth); a hit is a greedy
continuation containing the answer. The judge's tasks (`task_prompts`): single needle, multi-key
needle and variable tracking in code, scored by `greedy_matches`.
"""
import random
from typing import NamedTuple

import numpy as np
import torch

from .byte_llama import ByteTokenizer, needle_prompts

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
# calibration text. A task prompt holds the exact tokens of the answer, so a greedy answer is
# scored in one forward (`greedy_matches`).

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
    but the answer's last token (the tokens one scoring forward runs)."""
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


def greedy_matches(model, prompts) -> list:
    """Per prompt: does greedy decoding start with the answer's tokens. One forward of prompt +
    answer (but its last token) decides it exactly: greedy decoding emits the answer iff each of
    its tokens is the most likely one after the prompt and the answer tokens before it."""
    device = next(model.parameters()).device
    hits = []
    for p in prompts:
        ids = torch.cat([p.ids, p.answer_ids[:-1]])[None].to(device)
        with torch.no_grad():
            logits = model(ids, logits_to_keep=len(p.answer_ids)).logits[0]
        hits.append(bool((logits.argmax(-1).cpu() == p.answer_ids).all()))
    return hits


def probe_prompts(tokenizer, haystack_ids, n, length, seed=1) -> list:
    """What `plan` probes with: the fixture's trained needles; for a pretrained model the multi-key
    needle, since one passkey is answered at every margin (Qwen2.5-Coder at 32k: 40 of 40 while
    the judge's single needle fell from 99 to 72)."""
    if isinstance(tokenizer, ByteTokenizer):
        return retrieval_prompts(tokenizer, haystack_ids, n, length, seed=seed)
    return task_prompts("multikey_needle", tokenizer, haystack_ids, n, length, seed=seed)


def probe_hits(model, tokenizer, prompts) -> int:
    """Probes answered: task prompts scored in one forward each, the others by generation."""
    if prompts and isinstance(prompts[0], TaskPrompt):
        return sum(greedy_matches(model, prompts))
    return retrieval_hits(model, tokenizer, prompts)

