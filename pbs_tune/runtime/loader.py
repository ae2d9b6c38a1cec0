"""Run-time half of pbs-tune: pick the tuned entry for this GPU and length, and apply it.

`apply(model)` registers PBS as the attention function "pbs" through transformers'
`AttentionInterface` (with SDPA's mask builder) and switches the model to it. Prefill at
or above the profile's smallest tuned length runs PBS with the entry tuned for the largest
length <= the prompt; everything PBS cannot do exactly (decode steps, padding masks,
dropout, other dtypes, untuned shapes) falls back to SDPA and is counted in `stats()`.
Kernels come from the compiled cache under cache/<gpu>/, so no call compiles or tunes.
"""
import collections
import logging
import threading

import torch
import torch.nn.functional as F

from ..attention.op import pbs_attention
from ..dtypes import NAME_OF as _DTYPE_NAMES
from ..seqlen import format_length
from . import kernel_cache
from . import profiles
from .gpu import CPU, resolve_gpu

logger = logging.getLogger("pbs_tune")
ATTN_NAME = "pbs"
_stats = collections.Counter()
_default_profile = None
_stats_lock = threading.Lock()


def stats() -> dict:
    """Calls that ran PBS ('pbs') and SDPA fallbacks by reason ('fallback:<reason>')."""
    with _stats_lock:
        return dict(_stats)


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()


def _count(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def load_profile(gpu: str = "auto", path: str | None = None) -> profiles.Profile:
    """The tuned profile for this GPU (configs/<gpu>.yaml unless `path` is given)."""
    gpu = resolve_gpu(gpu)
    path = path or profiles.default_path(gpu)
    try:
        prof = profiles.load(path)
    except profiles.ProfileError as exc:
        if "no such profile" not in str(exc):
            raise
        raise profiles.ProfileError(f"no tuned profile for {gpu} at {path}; make one with: "
                                    f"pbs-tune sweep --gpu {gpu} --seqlen 32k --seqlen 128k") from None
    if not prof.for_gpu(gpu):
        raise profiles.ProfileError(f"{path} has no entries for {gpu}; make them with: "
                                    f"pbs-tune sweep --gpu {gpu} --seqlen 32k --profile {path}")
    prof.gpu = gpu
    _use_kernel_cache(prof)
    return prof


def _use_kernel_cache(prof, cache_root="cache"):
    """Point Triton at cache/<gpu>/ (rebuilt if stale or corrupted) before any kernel runs."""
    if prof.gpu == CPU:
        return
    entries = prof.for_gpu(prof.gpu)
    problem = kernel_cache.ensure(prof.gpu, entries, cache_root)
    if problem:
        logger.warning("pbs_tune: kernel cache under %s/%s: %s; compiled now", cache_root, prof.gpu, problem)
    _prewarm(entries)


_prewarmed = set()


def _prewarm(entries):
    """Pay Triton's once-per-process start-up (its own hash, imports, module loads) now,
    at load time, not on the first long prompt: one tiny call per distinct config."""
    for e in entries:
        for params, launch in e.configs():
            key = (e.dtype, e.heads, e.kv_heads, e.head_dim, params.block_size, params.segment_size,
                   params.threshold >= 1.0, launch)
            if key in _prewarmed:
                continue
            _prewarmed.add(key)
            kernel_cache.run_config_once(e, params, launch, 2 * params.segment_size)
    torch.cuda.synchronize()


class _Settings:
    """What one applied model needs at each attention call."""

    def __init__(self, prof, min_seqlen):
        self.profile = prof
        self.gpu = prof.gpu
        self.min_seqlen = min_seqlen


def _fallback_reason(settings, q, k, attention_mask, dropout, kwargs):
    n = q.shape[2]
    if k.shape[2] != n:
        return "decode"
    if attention_mask is not None:
        return "mask"
    if dropout:
        return "dropout"
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        return "unsupported_kwargs"
    if q.device.type != ("cpu" if settings.gpu == CPU else "cuda"):
        return "device"
    if q.dtype not in _DTYPE_NAMES:
        return "dtype"
    if n < settings.min_seqlen:
        return "short"
    return None


def _pick(settings, q, k, seqlen):
    return settings.profile.pick(seqlen, gpu=settings.gpu, heads=q.shape[1], kv_heads=k.shape[1],
                                 head_dim=q.shape[3], dtype=_DTYPE_NAMES[q.dtype])


def _run(settings, q, k, v, scale, layer_idx, sdpa):
    """PBS output (B, H, N, D), or SDPA's when PBS does not apply; counts which ran."""
    entry = _pick(settings, q, k, q.shape[2])
    if entry is None:
        _count("fallback:untuned_shape")
        logger.debug("pbs_tune: no profile entry for shape %s dtype %s at %d tokens; using SDPA",
                     tuple(q.shape), q.dtype, q.shape[2])
        return sdpa()
    if entry.dense_faster:
        _count("fallback:dense_faster")
        return sdpa()
    cfg = entry.config_for_layer(layer_idx)
    if cfg is None:
        _count("fallback:dense_layer")
        return sdpa()
    params, launch = cfg
    _count("pbs")
    return pbs_attention(q, k, v, block_size=params.block_size, segment_size=params.segment_size,
                         threshold=params.threshold, launch=launch, scale=scale)


def _pbs_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           is_causal=None, **kwargs):
    """transformers attention function: same contract as its `sdpa_attention_forward`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)

    settings = getattr(module, "pbs_settings", None)
    reason = "not_applied" if settings is None else _fallback_reason(settings, query, key, attention_mask,
                                                                     dropout, kwargs)
    if reason is not None:
        _count(f"fallback:{reason}")
        logger.debug("pbs_tune: layer %s falls back to SDPA (%s)", getattr(module, "layer_idx", "?"), reason)
        return sdpa()
    out = _run(settings, query, key, value, scaling, getattr(module, "layer_idx", None), sdpa)
    if isinstance(out, tuple):  # SDPA fallback already returns (B, N, H, D), None
        return out
    return out.transpose(1, 2).contiguous(), None


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register(ATTN_NAME, _pbs_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


def apply(model, profile=None, min_seqlen=None, cache_root="cache"):
    """Switch a transformers model to PBS attention with a tuned profile; returns the model."""
    prof = profile if profile is not None else load_profile()
    prof.gpu = prof.gpu or resolve_gpu("auto")
    entries = prof.for_gpu(prof.gpu)
    if not entries:
        raise profiles.ProfileError(f"{prof.path} has no entries for {prof.gpu}; run: pbs-tune sweep --gpu {prof.gpu}")
    smallest = min(e.seqlen for e in entries)
    min_seqlen = max(smallest, min_seqlen or 0)
    _use_kernel_cache(prof, cache_root)
    _register()
    settings = _Settings(prof, min_seqlen)
    n_layers = 0
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups"):
            module.pbs_settings = settings
            n_layers += 1
    if n_layers == 0:
        raise ValueError(f"{type(model).__name__} has no attention modules that pbs-tune recognises")
    model.set_attn_implementation(ATTN_NAME)
    logger.info("pbs_tune: PBS on %d attention layers from %s tokens (%s)", n_layers,
                format_length(min_seqlen), prof.path)
    return model


def tuned_attention(q, k, v, profile=None, scale=None):
    """PBS causal prefill with the tuned entry for this length; SDPA where PBS does not apply.

    Usable without transformers: q (B, Hq, N, D), k/v (B, Hkv, N, D); returns (B, Hq, N, D).
    Without `profile`, this GPU's profile is loaded once per process.
    """
    global _default_profile
    if profile is None:
        _default_profile = _default_profile or load_profile()
    prof = profile if profile is not None else _default_profile
    if prof.gpu is None:
        prof.gpu = resolve_gpu("auto")
        _use_kernel_cache(prof)
    smallest = min((e.seqlen for e in prof.for_gpu(prof.gpu)), default=None)
    settings = _Settings(prof, smallest if smallest is not None else float("inf"))

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])

    reason = _fallback_reason(settings, q, k, None, 0.0, {})
    if reason is not None:
        _count(f"fallback:{reason}")
        return sdpa()
    return _run(settings, q, k, v, scale, None, sdpa)


attention = tuned_attention  # the name of earlier releases
