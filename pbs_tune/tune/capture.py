"""Record calibration Q/K/V from a transformers model, as its attention layers see them.

A recording attention function is registered through `AttentionInterface`; it stores the
post-RoPE query/key/value of the chosen layers and then runs SDPA, so the model computes
exactly what it would otherwise. Output: safetensors with '<layer>.q/.k/.v' tensors of
shape (heads, seqlen, head_dim), read back by `pbs-tune sweep --calib`.
"""
import os

import torch

RECORDER = "pbs_capture"


def _token_ids(model_dir, text, seqlen, vocab_size):
    """Tokenise with the model's tokenizer; without one, map UTF-8 bytes into the vocabulary."""
    try:
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    except (OSError, ValueError, TypeError):
        ids = torch.tensor([list(text.encode("utf-8"))]) % vocab_size
    if ids.shape[1] < seqlen:
        raise ValueError(f"the text gives {ids.shape[1]} tokens, fewer than --seqlen {seqlen}; use a longer file")
    return ids[:, :seqlen]


def capture_qkv(model_dir, text_file, seqlen, out_file, layers=None, dtype="bfloat16", device=None):
    """Run one prefill of `seqlen` tokens and save the chosen layers' Q/K/V. Returns #layers."""
    from safetensors.torch import save_file
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if not os.path.isdir(model_dir):
        raise ValueError(f"--model {model_dir} is not a local model folder (nothing is downloaded)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    n_layers = model.config.num_hidden_layers
    wanted = set(range(n_layers)) if layers is None else set(layers)
    bad = sorted(i for i in wanted if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has {n_layers} layers")
    with open(text_file, encoding="utf-8") as f:
        ids = _token_ids(model_dir, f.read(), seqlen, model.config.vocab_size).to(device)

    recorded = {}

    def record(module, query, key, value, attention_mask, **kwargs):
        idx = module.layer_idx
        if idx in wanted:
            for name, t in (("q", query), ("k", key), ("v", value)):
                recorded[f"layer{idx:03d}.{name}"] = t[0].detach().to("cpu").contiguous()
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(RECORDER, record)
    ALL_MASK_ATTENTION_FUNCTIONS.register(RECORDER, sdpa_mask)
    model.set_attn_implementation(RECORDER)
    with torch.no_grad():
        model(ids)
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    save_file(recorded, out_file, metadata=dict(model=os.path.abspath(model_dir), seqlen=str(seqlen)))
    return len(wanted)
