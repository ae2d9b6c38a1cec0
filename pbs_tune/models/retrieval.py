"""Retrieval prompts and their scoring: what output error alone does not see.

SmolLM2 (and any model with a tokenizer): a passkey ('The secret key is 12345.') hidden at a
depth of code, asked for at the end. The byte-level fixture: its trained key-value needles with
distractors (models/byte_llama.py). A prompt is (ids, answer, depth); a hit is a greedy
continuation containing the answer.
"""
import random

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
