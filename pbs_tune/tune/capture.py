"""Record calibration Q/K/V from a transformers model, as its attention layers see them.

A recording attention function is registered through `AttentionInterface`; it stores the
post-RoPE query/key/value of the chosen layers and then runs SDPA, so the model computes
exactly what it would otherwise. Output: safetensors with '<layer>.q/.k/.v' tensors of
shape (heads, seqlen, head_dim), read back by `pbs-tune sweep --calib`.
"""
import contextlib
import os

import torch

RECORDER = "pbs_capture"


def _token_ids(tokenizer, text, seqlen, vocab_size):
    """Tokenise with the model's tokenizer; without one, map UTF-8 bytes into the vocabulary."""
    if tokenizer is not None:
        ids = tokenizer(text, return_tensors="pt").input_ids
    else:
        ids = torch.tensor([list(text.encode("utf-8"))]) % vocab_size
    if ids.shape[1] < seqlen:
        raise ValueError(f"the text gives {ids.shape[1]} tokens, fewer than --seqlen {seqlen}; use a longer file")
    return ids[:, :seqlen]


def capture_qkv(model_dir, text_file, seqlen, out_file, layers=None, dtype="bfloat16", device=None,
                gguf_file=None):
    """Run one prefill of `seqlen` tokens and save the chosen layers' Q/K/V. Returns #layers.

    `model_dir` is a local folder (a GGUF file in it with `gguf_file`) or 'smollm2'."""
    from safetensors.torch import save_file

    from .fixtures import load_model
    model, tokenizer = load_model(model_dir, gguf_file=gguf_file, dtype=dtype, device=device)
    device = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    wanted = set(range(n_layers)) if layers is None else set(layers)
    bad = sorted(i for i in wanted if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has {n_layers} layers")
    with open(text_file, encoding="utf-8") as f:
        ids = _token_ids(tokenizer, f.read(), seqlen, model.config.vocab_size).to(device)
    recorded = {}
    with recording_attention(model, wanted) as seen, torch.no_grad():
        model(ids)
    for idx, (q, k, v) in seen.items():
        for name, t in (("q", q), ("k", k), ("v", v)):
            recorded[f"layer{idx:03d}.{name}"] = t[0].to("cpu").contiguous()
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    save_file(recorded, out_file, metadata=dict(model=str(model_dir), gguf_file=str(gguf_file), seqlen=str(seqlen)))
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
