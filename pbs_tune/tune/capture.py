"""Record calibration Q/K/V from a transformers model, as its attention layers see them.

A recording attention function is registered through `AttentionInterface`; it stores the
post-RoPE query/key/value of the chosen layers and then runs SDPA, so the model computes
exactly what it would otherwise. Output: safetensors with '<layer>.q/.k/.v' tensors of
shape (heads, seqlen, head_dim), or (sequences, heads, seqlen, head_dim) for several windows of
the text, read back by `pbs-tune sweep --calib`. Several sequences per layer let `--per-head`
check each layer's bound on a sequence left out of the fit.
"""
import contextlib
import os

import torch

from .. import progress

RECORDER = "pbs_capture"


def _token_ids(tokenizer, text, seqlen, vocab_size, sequences=1):
    """(sequences, seqlen) consecutive windows of the text, tokenised with the model's tokenizer;
    without one, UTF-8 bytes mapped into the vocabulary."""
    if tokenizer is not None:
        ids = tokenizer(text, return_tensors="pt").input_ids
    else:
        ids = torch.tensor([list(text.encode("utf-8"))]) % vocab_size
    if ids.shape[1] < seqlen * sequences:
        raise ValueError(f"the text gives {ids.shape[1]} tokens, fewer than --sequences {sequences} x --seqlen "
                         f"{seqlen}; use a longer file")
    return ids[0, :seqlen * sequences].view(sequences, seqlen)


def capture_qkv(model_dir, text_file, seqlen, out_file, layers=None, dtype="bfloat16", device=None,
                gguf_file=None, sequences=1):
    """Run one prefill of `seqlen` tokens per sequence and save the chosen layers' Q/K/V. Returns #layers.

    `model_dir` is a local folder (a GGUF file in it with `gguf_file`) or 'smollm2'."""
    from safetensors.torch import save_file

    from ..models.fixtures import load_model
    progress.say(f"capture: loading {model_dir}")
    model, tokenizer = load_model(model_dir, gguf_file=gguf_file, dtype=dtype, device=device)
    device = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    wanted = set(range(n_layers)) if layers is None else set(layers)
    bad = sorted(i for i in wanted if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has {n_layers} layers")
    with open(text_file, encoding="utf-8") as f:
        windows = _token_ids(tokenizer, f.read(), seqlen, model.config.vocab_size, sequences).to(device)
    parts = {}
    steps = progress.Steps(f"capture: prefill of {seqlen} tokens, sequence", len(windows))
    for ids in windows:  # one prefill at a time: a batch would hold every sequence's activations
        with recording_attention(model, wanted) as seen, torch.no_grad():
            model(ids[None])
        for idx, qkv in seen.items():
            for name, t in zip("qkv", qkv):
                parts.setdefault(f"layer{idx:03d}.{name}", []).append(t[0].to("cpu"))
        steps.step(f"({len(seen)} layers recorded)")
    recorded = {key: (ts[0] if sequences == 1 else torch.stack(ts)).contiguous() for key, ts in parts.items()}
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    save_file(recorded, out_file, metadata=dict(model=str(model_dir), gguf_file=str(gguf_file), seqlen=str(seqlen),
                                                sequences=str(sequences)))
    return len(wanted)


@contextlib.contextmanager
def recording_attention(model, layers):
    """Within the block, `model`'s attention stores the Q/K/V (after RoPE) of `layers` in the
    yielded dict {layer: (q, k, v)} and then runs SDPA, so the model computes what it would."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    seen = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in layers:
            seen[module.layer_idx] = (query.detach(), key.detach(), value.detach())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORDER, record)
    ALL_MASK_ATTENTION_FUNCTIONS.register(RECORDER, sdpa_mask)
    before = model.config._attn_implementation
    model.set_attn_implementation(RECORDER)
    try:
        yield seen
    finally:
        model.set_attn_implementation(before)
