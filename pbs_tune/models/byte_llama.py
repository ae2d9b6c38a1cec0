"""The long-context fixture trained here: a small byte-level GQA Llama with real, trained attention.

SmolLM2 stops at 8k tokens and has head_dim 64; this fixture has head_dim 128, 8 query / 2 KV
heads and was trained up to 32k bytes (models/train_fixture.py). Its tokenizer is UTF-8 bytes
(vocabulary 256), so it needs no files; `fixture.json` in the model folder marks it.

Needles: a key-value line `# <name> = <5 digits>` hidden in code, asked for at the end with
`# <name> =`. Training mixes such sequences in (several keys, all asked); evaluation hides
`keys` needles and asks for one, the one at the chosen depth, so the others are distractors.
"""
import json
import os

import numpy as np

MARKER = "fixture.json"
VOCAB = 256


class ByteTokenizer:
    """UTF-8 bytes as token ids, with the slice of the transformers tokenizer API the tools use."""

    vocab_size = VOCAB

    def __call__(self, text, return_tensors=None):
        from transformers import BatchEncoding
        ids = list(text.encode("utf-8"))
        if return_tensors == "pt":
            import torch
            return BatchEncoding({"input_ids": torch.tensor([ids])})
        return BatchEncoding({"input_ids": ids})

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def is_fixture(folder) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def read_marker(folder) -> dict:
    with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
        return json.load(f)


def model_config(layers=8, hidden=512, intermediate=1024, heads=8, kv_heads=2, head_dim=128, rope_theta=1e6):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=head_dim, max_position_embeddings=131072, rope_theta=rope_theta,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def text_bytes(files, limit) -> np.ndarray:
    """Concatenated files (each after a '# file: name' line) as uint8, at most `limit` bytes."""
    parts, total = [], 0
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        chunk = b"# file: " + os.path.basename(path).encode() + b"\n" + data + b"\n"
        parts.append(chunk[:limit - total])
        total += len(parts[-1])
        if total >= limit:
            break
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def _name(rng):
    return "".join(chr(97 + int(c)) for c in rng.integers(0, 26, size=6))


def needle_sequence(rng, text, seqlen, keys=4, asked_depth=None):
    """One sequence of exactly `seqlen` bytes: code with `keys` key-value lines.

    asked_depth None (training): every key is asked at the end with its answer; returns
    (bytes, None). Otherwise (evaluation): the first key sits at that relative depth of the
    body, the others at random depths, and the sequence ends with the question for the first
    key; returns (prompt bytes, answer string) with len(prompt) == seqlen."""
    names = []
    while len(names) < keys:
        name = _name(rng)
        if name not in names:
            names.append(name)
    values = [str(int(rng.integers(10000, 100000))) for _ in names]
    needles = [f"\n# {n} = {v}\n".encode() for n, v in zip(names, values)]
    if asked_depth is None:
        order = rng.permutation(keys)
        tail = b"".join(f"\n# {names[i]} = {values[i]}\n".encode() for i in order)
    else:
        tail = f"\n# {names[0]} =".encode()
    body_len = seqlen - len(tail) - sum(len(n) for n in needles)
    start = int(rng.integers(0, len(text) - body_len))
    body = text[start:start + body_len].tobytes()
    cuts = rng.integers(0, body_len + 1, size=keys)
    if asked_depth is not None:
        cuts[0] = int(asked_depth * body_len)
    pieces, prev = [], 0
    for i in np.argsort(cuts, kind="stable"):
        pieces += [body[prev:cuts[i]], needles[i]]
        prev = int(cuts[i])
    seq = b"".join(pieces) + body[prev:] + tail
    assert len(seq) == seqlen
    return seq, (None if asked_depth is None else values[0])


def needle_prompts(text, n, seqlen, keys=4, seed=0, depths=(0.1, 0.3, 0.5, 0.7, 0.9)):
    """`n` evaluation prompts [(ids tensor, answer, depth)], depths in turn."""
    import torch
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        depth = depths[i % len(depths)]
        seq, answer = needle_sequence(rng, text, seqlen, keys=keys, asked_depth=depth)
        prompts.append((torch.tensor(list(seq)), answer, depth))
    return prompts
