"""Run-time half of pbs-tune: pick the tuned entry for this GPU and length, and apply it.

`apply(model)` registers PBS as the attention function "pbs" through transformers'
`AttentionInterface` (with SDPA's mask builder) and switches the model to it. Prefill at
or above the profile's smallest tuned length runs PBS with the entry tuned for the largest
length <= the prompt; everything PBS cannot do exactly (decode steps, padding masks,
dropout, non-causal modules, autograd, other dtypes, untuned shapes) falls back to SDPA and is
counted in `stats()`.
Kernels come from the profile's compiled-kernel library (see kernel_library.py), so no
call compiles or tunes; without a usable library Triton's JIT takes over, said once.
"""
import collections
import logging
import os
import threading
import time

import torch
import torch.nn.functional as F

from ..op.pbs_attention import pbs_attention
from ..dtypes import NAME_OF as _DTYPE_NAMES
from ..seqlen import format_length
from . import kernel_library, profile_store, profiles
from .gpu import CPU, family_of, present_gpu

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


def load_profile(gpu: str = "auto", path: str | None = None, *, use_library: bool = True) -> profiles.Profile:
    """The tuned profile for `gpu` ('auto': the GPU present), with its kernels bound.

    Looked up by `path`, then $PBS_TUNE_HOME, the user's store and the profiles shipped with
    pbs-tune (profile_store.py). A profile of a GPU that is not present loads as data only;
    running it needs that GPU. `use_library=False` (or PBS_TUNE_KERNELS=jit in the
    environment) leaves every kernel to Triton's JIT.
    """
    use_library = use_library and os.environ.get("PBS_TUNE_KERNELS", "library") != "jit"
    present = present_gpu()
    wanted = present if gpu in (None, "", "auto") else gpu.lower()
    if wanted is None:
        raise profiles.ProfileError("no GPU here (set TRITON_INTERPRET=1 for the CPU interpreter); "
                                    "name the profile's GPU to read it as data, e.g. load_profile('h100-sxm')")
    if present and wanted == family_of(present):
        wanted = present  # 'h100' on an H100 SXM means 'h100-sxm'
    t0 = time.perf_counter()
    if path is not None and not os.path.exists(path):
        raise profiles.ProfileError(f"no tuned profile at {path}; make one on that GPU with: "
                                    f"pbs-tune sweep --gpu {wanted} --seqlen 32k --seqlen 128k --profile {path}")
    prof = profiles.load(path or _find(wanted))
    variant = _variant_in(prof, wanted)
    if variant != wanted:
        logger.warning("pbs_tune: %s has no entries for %s; using those tuned on %s (same family, "
                       "other clocks and bandwidth: re-tune with pbs-tune sweep --gpu %s for exact timings)",
                       prof.path, wanted, variant, wanted)
    prof.gpu = variant
    prof.runnable = present is not None and (present == wanted or family_of(present) == family_of(variant))
    prof.load_times = dict(read_s=time.perf_counter() - t0)
    if prof.runnable and present != CPU:
        _bind_kernels(prof, use_library)
    logger.info("pbs_tune: loaded %s: %s", prof.path, ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in prof.load_times.items()))
    return prof


def _find(gpu):
    found = profile_store.find_profile(gpu)
    if found is None:
        raise profiles.ProfileError(f"no tuned profile for {gpu} (searched {profile_store.searched_folders()}); "
                                    f"make one on that GPU with: pbs-tune sweep --gpu {gpu} --seqlen 32k --seqlen 128k")
    return found.path


def _variant_in(prof, wanted):
    """`wanted` if the profile has its entries, else one variant of the same family."""
    if prof.for_gpu(wanted):
        return wanted
    family = [e.gpu for e in prof.entries if family_of(e.gpu) == family_of(wanted)]
    if not family:
        raise profiles.ProfileError(f"{prof.path} has no entries for {wanted}; make them on that GPU with: "
                                    f"pbs-tune sweep --gpu {wanted} --seqlen 32k --profile {prof.path}")
    return sorted(family)[0]


_bound_libraries = {}


def _bind_kernels(prof, use_library=True):
    """Load the profile's kernel library once per process, then pay torch's and the kernels'
    first-use costs with one short call per config, at load time rather than on a prompt."""
    t0 = time.perf_counter()
    if use_library and prof.library not in _bound_libraries:
        try:
            if prof.library is None:
                raise kernel_library.LibraryError(f"{prof.path} names no kernel library (pbs-tune compile makes one)")
            _bound_libraries[prof.library] = kernel_library.bind(prof.library)
        except kernel_library.LibraryError as exc:
            _bound_libraries[prof.library] = 0
            logger.warning("pbs_tune: %s; Triton's JIT compiles the kernels on first use instead", exc)
    t1 = time.perf_counter()
    _prewarm(prof.for_gpu(prof.gpu))
    prof.load_times.update(bind_s=t1 - t0, warm_up_s=time.perf_counter() - t1)


_prewarmed = set()


def _prewarm(entries):
    for e in entries:
        for params, launch in e.configs():
            key = (e.dtype, e.heads, e.kv_heads, e.head_dim, params.block_size, params.segment_size,
                   params.keeps_all, launch)
            if key in _prewarmed:
                continue
            _prewarmed.add(key)
            kernel_library.run_config_once(e, params, launch, kernel_library.prewarm_length(params))
    torch.cuda.synchronize()


def _require_runnable(prof):
    if not prof.runnable:
        raise profiles.ProfileError(f"{prof.path} is tuned for {prof.gpu} and this machine has "
                                    f"{present_gpu() or 'no GPU'}: running it needs that GPU")


class _Settings:
    """What one applied model needs at each attention call."""

    def __init__(self, prof, min_seqlen):
        self.profile = prof
        self.gpu = prof.gpu
        self.min_seqlen = min_seqlen


def _fallback_reason(settings, q, k, attention_mask, dropout, kwargs, causal=True):
    n = q.shape[2]
    if not causal:
        return "non_causal"
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
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return "grad"  # PBS is forward-only (prefill inference)
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
                         threshold=params.threshold, launch=launch, scale=scale, permute=params.permute)


def _pbs_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           is_causal=None, **kwargs):
    """transformers attention function: same contract as its `sdpa_attention_forward`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)

    settings = getattr(module, "pbs_settings", None)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    reason = "not_applied" if settings is None else _fallback_reason(settings, query, key, attention_mask,
                                                                     dropout, kwargs, causal)
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


def _ready(prof):
    """A profile made or loaded elsewhere, checked and bound to this process (once)."""
    if prof.gpu is None:
        prof.gpu = present_gpu()
        prof.runnable = prof.gpu is not None
    _require_runnable(prof)
    if not prof.for_gpu(prof.gpu):
        raise profiles.ProfileError(f"{prof.path} has no entries for {prof.gpu}; make them with: "
                                    f"pbs-tune sweep --gpu {prof.gpu} --seqlen 32k --profile {prof.path}")
    if prof.gpu != CPU and "bind_s" not in prof.load_times:
        _bind_kernels(prof)
    return prof


def apply(model, profile=None, min_seqlen=None):
    """Switch a transformers model to PBS attention with a tuned profile; returns the model."""
    prof = _ready(profile if profile is not None else load_profile())
    smallest = min(e.seqlen for e in prof.for_gpu(prof.gpu))
    min_seqlen = max(smallest, min_seqlen or 0)
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
    prof = _ready(profile if profile is not None else _default_profile)
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
