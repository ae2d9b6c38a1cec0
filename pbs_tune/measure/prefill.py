"""The whole-model prefill timer every benchmark uses, and dense attention as its reference.

A prefill is one forward of the prompt that computes the logits of its last token only (what a
serving engine's prefill produces); chunked, it runs the prompt chunk after chunk through a
transformers cache. Dense attention is transformers' SDPA path, optionally on one SDPA backend
(cuDNN is the dense anchor on Hopper).
"""
import contextlib

import torch

from .timing import median_ms, sdpa_backend


def prefill(model, ids, attention_mask=None, chunk=None):
    """The logits of the last token after prefilling `ids` (in `chunk`-token pieces with a cache)."""
    with torch.no_grad():
        if chunk is None:
            return model(ids, attention_mask=attention_mask, logits_to_keep=1).logits
        from transformers import DynamicCache
        cache = DynamicCache()
        for s in range(0, ids.shape[1], chunk):
            mask = None if attention_mask is None else attention_mask[:, :s + chunk]
            logits = model(ids[:, s:s + chunk], attention_mask=mask, past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits
        return logits


def prefill_ms(model, ids, attention_mask=None, chunk=None) -> float:
    """Median milliseconds of `prefill` (do_bench on the GPU)."""
    return median_ms(lambda: prefill(model, ids, attention_mask, chunk), ids.is_cuda)


@contextlib.contextmanager
def dense(model, backend: str | None = None):
    """`model` on dense SDPA (one backend: 'cudnn' or 'flash', else PyTorch's choice) inside the block;
    its attention implementation is restored afterwards."""
    before = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        from torch.nn.attention import sdpa_kernel
        with (sdpa_kernel(sdpa_backend(backend)) if backend else contextlib.nullcontext()):
            yield model
    finally:
        model.set_attn_implementation(before)


def dense_prefill_ms(model, ids, backends=("cudnn", "flash"), attention_mask=None, chunk=None) -> dict:
    """{'<backend>_ms': ...} of dense prefill per SDPA backend; a backend that refuses: '<backend>_error'."""
    out = {}
    for name in backends:
        try:
            with dense(model, name):
                out[f"{name}_ms"] = prefill_ms(model, ids, attention_mask, chunk)
        except RuntimeError as exc:
            out[f"{name}_error"] = str(exc)[:200]
    return out
