"""Run-time half of pbs-tune: pick the tuned entry for this GPU and length, and apply it.

`apply(model)` registers PBS as the attention function "pbs" through transformers'
`AttentionInterface` and switches the model to it. Prefill whose keys (cached prefix + chunk)
reach the profile's smallest tuned length runs PBS with the entry tuned for the largest length
<= the keys, for the model's shape or the nearest tuned one (same head_dim and dtype, closest
GQA ratio; said once). Padded batches get transformers' 2-D padding mask (as its
flash-attention path does) and run PBS per sequence on its unpadded rows; chunked prefill runs
the chunk's queries against the whole prefix. Everything PBS cannot do exactly (decode steps,
masks other than contiguous padding, dropout, non-causal modules, autograd, other dtypes,
shapes with no entry of their head_dim) falls back to SDPA and is counted in `stats()`.
Kernels come from the profile's compiled-kernel library (see kernel_library.py), so no
call compiles or tunes; without a usable library Triton's JIT takes over, said once.
"""
import collections
import dataclasses
import logging
import os
import threading
import time
import weakref

import torch
import torch.nn.functional as F

from ..op.pbs_attention import pbs_attention
from ..dtypes import name_of
from ..seqlen import format_length
from . import kernel_library, profile_store, profiles
from .gpu import CPU, present_gpu, resolve_gpu, runs_here, variant_in
from .graphs import CAPACITY, GraphCache

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

    `path` (or a path in place of `gpu`: load_profile("my.yaml")) names the file; else it is looked
    up in $PBS_TUNE_HOME, the user's store and the profiles shipped with pbs-tune (profile_store.py). A profile of a GPU that is not present loads as data only;
    running it needs that GPU. `use_library=False` (or PBS_TUNE_KERNELS=jit in the
    environment) leaves every kernel to Triton's JIT.
    """
    use_library = use_library and os.environ.get("PBS_TUNE_KERNELS", "library") != "jit"
    if path is None and (os.sep in gpu or gpu.endswith((".yaml", ".yml"))):  # load_profile("my.yaml")
        path, gpu = gpu, "auto"
    if path is not None and not os.path.exists(path):
        raise profiles.ProfileError(f"no tuned profile at {path}: check the path, or make one here with: "
                                    + profile_store.sweep_hint(present_gpu() or CPU, path))
    try:
        wanted = resolve_gpu(gpu, must_be_present=False)
    except RuntimeError:
        raise profiles.ProfileError("no GPU here (set TRITON_INTERPRET=1 for the CPU interpreter); "
                                    "name the profile's GPU to read it as data, e.g. load_profile('h100-sxm')") from None
    t0 = time.perf_counter()
    prof = profiles.load(path or _find(wanted))
    variant = variant_in((e.gpu for e in prof.entries), wanted)
    if variant is None:
        raise profiles.ProfileError(f"{prof.path} has no entries for {wanted}; make them on that GPU with: "
                                    + profile_store.sweep_hint(wanted, prof.path))
    if variant != wanted:
        logger.warning("pbs_tune: %s has no entries for %s; using those tuned on %s (same family, "
                       "other clocks and bandwidth: re-tune with pbs-tune sweep --gpu %s for exact timings)",
                       prof.path, wanted, variant, wanted)
    for e in prof.entries:
        if e.gpu == variant and e.failed_check:
            logger.warning("pbs_tune: %s: the entry %s is never run: %s", prof.path, e.describe(), e.failed_check)
    untuned = next((e.not_tuned for e in prof.entries if e.gpu == variant and e.not_tuned), None)
    if untuned:
        logger.warning("pbs_tune: %s: %s; PBS runs from %s tokens, SDPA below", prof.path, untuned,
                       format_length(profiles.UNTUNED_MIN_SEQLEN))
    runnable = runs_here(variant)
    prof = dataclasses.replace(prof, gpu=variant, runnable=runnable, load_times=dict(read_s=time.perf_counter() - t0))
    if runnable and variant != CPU:
        prof.load_times.update(_bind_kernels(prof, use_library))
    logger.info("pbs_tune: loaded %s: %s", prof.path, ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in prof.load_times.items()))
    return prof


def _find(gpu):
    found = profile_store.find_profile(gpu)
    if found is None:
        raise profiles.ProfileError(f"no tuned profile for {gpu} (searched {profile_store.searched_folders()}); "
                                    f"make one on that GPU with: pbs-tune sweep --gpu {gpu} --seqlen 32k --seqlen 128k")
    return found.path


_bound_libraries = {}


def _bind_kernels(prof, use_library=True) -> dict:
    """Load the profile's kernel library once per process, then pay torch's and the kernels'
    first-use costs with one short call per config, at load time rather than on a prompt.
    Returns where the time went."""
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
    return dict(bind_s=t1 - t0, warm_up_s=time.perf_counter() - t1)


_prewarmed = set()


def _prewarm(entries):
    for e in entries:
        for params, launch in e.configs():
            key = profiles.KernelKey.of(e, params, launch)
            if key in _prewarmed:
                continue
            _prewarmed.add(key)
            kernel_library.run_config_once(e, params, launch, kernel_library.prewarm_length(params))
    torch.cuda.synchronize()


def shortest_pbs_length(prof) -> int | None:
    """The fewest keys (prefix + chunk) PBS runs at with this profile: its smallest entry's length,
    at least profiles.UNTUNED_MIN_SEQLEN for entries not tuned on their GPU; None without entries."""
    entries = prof.for_gpu(prof.gpu)
    if not entries:
        return None
    smallest = min(e.seqlen for e in entries)
    return max(smallest, profiles.UNTUNED_MIN_SEQLEN) if any(e.not_tuned for e in entries) else smallest


def _require_runnable(prof):
    if not prof.runnable:
        raise profiles.ProfileError(f"{prof.path} is tuned for {prof.gpu} and this machine has "
                                    f"{present_gpu() or 'no GPU'}: running it needs that GPU")


# Shorter chunks after a cached prefix stay dense: re-permuting the whole prefix per chunk costs more
# than it saves (H200, 32k prefix: 2k chunks 0.97x dense cuDNN, 4k 1.46x; benchmarks/README.md).
MIN_CHUNK = 4096


_graphs = GraphCache()  # one per process: the graphs' buffers are reused by every layer and model


class _Settings:
    """What one applied model needs at each attention call."""

    def __init__(self, prof, min_seqlen, min_chunk=MIN_CHUNK, cuda_graphs=True):
        self.profile = prof
        self.gpu = prof.gpu
        self.min_seqlen = min_seqlen
        self.min_chunk = min_chunk
        self.graphs = _graphs if cuda_graphs and os.environ.get("PBS_TUNE_CUDA_GRAPHS", "1") != "0" else None


def _fallback_reason(settings, q, k, attention_mask, dropout, kwargs, causal=True):
    """Why the whole call runs SDPA, or None. Padding masks are handled per sequence (_run)."""
    n = q.shape[2]
    if not causal:
        return "non_causal"
    if n == 1:
        return "decode"
    if n < k.shape[2] and n < settings.min_chunk:
        return "short_chunk"
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape != (q.shape[0], k.shape[2])):
        return "mask"
    if dropout:
        return "dropout"
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        return "unsupported_kwargs"
    if q.device.type != ("cpu" if settings.gpu == CPU else "cuda"):
        return "device"
    if name_of(q.dtype) is None:
        return "dtype"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return "grad"  # PBS is forward-only (prefill inference)
    if k.shape[2] < settings.min_seqlen:
        return "short"
    return None


def _pick(settings, q, k, seqlen):
    return settings.profile.pick(seqlen, gpu=settings.gpu, heads=q.shape[1], kv_heads=k.shape[1],
                                 head_dim=q.shape[3], dtype=name_of(q.dtype), nearest=True)


def _config(settings, q, k, layer_idx):
    """(PbsParams, LaunchConfig) for keys of this length, or the fallback reason."""
    if k.shape[2] < settings.min_seqlen:
        return "short"
    entry = _pick(settings, q, k, k.shape[2])
    if entry is None:
        return "untuned_shape"
    if entry.dense_faster:
        return "dense_faster"
    return entry.config_for_layer(layer_idx) or "dense_layer"


def _pbs(q, k, v, cfg, scale, out=None):
    params, launch = cfg
    return pbs_attention(q, k, v, **params.op_args(), launch=launch, scale=scale, out=out)


def _run(settings, q, k, v, scale, layer_idx, sdpa, padding=None):
    """PBS output (B, H, M, D), or SDPA's when PBS does not apply; counts which ran.
    `padding` (B, N) bool marks real tokens: each sequence then runs on its own rows."""
    if padding is not None:
        return _run_padded(settings, q, k, v, scale, layer_idx, padding)
    cfg = _config(settings, q, k, layer_idx)
    if isinstance(cfg, str):
        _count(f"fallback:{cfg}")
        logger.debug("pbs_tune: %s at %d keys falls back to SDPA (%s)", tuple(q.shape), k.shape[2], cfg)
        return sdpa()
    _count("pbs")
    out = settings.graphs.run(q, k, v, *cfg, scale) if settings.graphs is not None else None
    return out if out is not None else _pbs(q, k, v, cfg, scale)


def _run_padded(settings, q, k, v, scale, layer_idx, padding):
    """A padded batch: per sequence, PBS (or dense SDPA) over its real tokens only, zeros on the
    padded query rows. Counted once per sequence. Padding must be contiguous (left or right)."""
    spans = padded_spans(padding)
    if spans is None:
        _count("fallback:mask")
        return None
    B, H, M, D = q.shape
    offset = k.shape[2] - M
    out = q.new_zeros(B, H, M, D)
    for b, (start, end) in enumerate(spans):
        first_query = max(start, offset)
        if end <= first_query:
            continue  # this sequence has no real query rows in the chunk
        qs = q[b:b + 1, :, first_query - offset:end - offset]
        ks, vs = k[b:b + 1, :, start:end], v[b:b + 1, :, start:end]
        rows = out[b:b + 1, :, first_query - offset:end - offset]
        cfg = _config(settings, qs, ks, layer_idx)
        if isinstance(cfg, str):
            _count(f"fallback:{cfg}")
            rows.copy_(dense_causal(qs, ks, vs, scale))
        else:
            _count("pbs")
            _pbs(qs, ks, vs, cfg, scale, out=rows)
    return out


_last_spans = [lambda: None, None, None]  # (weak ref to the mask, its version, spans)


def padded_spans(padding):
    """[(start, end), ...] of each row's real tokens, or None if some row's are not contiguous.
    Every layer of one forward gets the same mask object, so it is read on the host once per
    forward (one device sync), not once per layer; a different or modified mask is read anew."""
    if _last_spans[0]() is padding and _last_spans[1] == padding._version:
        return _last_spans[2]
    real = padding.bool()
    counts = real.sum(-1)
    starts = real.to(torch.int8).argmax(-1)
    idx = torch.arange(real.shape[-1], device=real.device)
    inside = (idx >= starts[:, None]) & (idx < (starts + counts)[:, None])
    spans = [(s, s + c) for s, c in zip(starts.tolist(), counts.tolist())] if torch.equal(inside, real) else None
    _last_spans[:] = [weakref.ref(padding), padding._version, spans]
    return spans


def dense_causal(q, k, v, scale):
    """SDPA for queries that are the last positions of their keys (any q/k lengths)."""
    M, N = q.shape[2], k.shape[2]
    mask = None if M == N else torch.ones(M, N, dtype=torch.bool, device=q.device).tril(N - M)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def sdpa_mask_from_padding(padding, q_len, k_len, device):
    """transformers' SDPA mask (B, 1, q, k) bool for a 2-D padding mask and queries that are the
    last q_len of k_len positions; None where plain `is_causal` is exact."""
    if padding is None and q_len in (1, k_len):
        return None
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    mask = causal[None, None]
    if padding is not None:
        mask = mask & padding.bool()[:, None, None, :]
    return mask


def _pbs_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           is_causal=None, **kwargs):
    """transformers attention function: same contract as its `sdpa_attention_forward`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # The mask builder registered for "pbs" hands over transformers' 2-D padding mask (or None),
    # as for flash attention; SDPA needs the 4-D one, made here only when SDPA runs.
    padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None

    def sdpa():
        mask = attention_mask if padding is None and attention_mask is not None else \
            sdpa_mask_from_padding(padding, query.shape[2], key.shape[2], query.device)
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)

    settings = getattr(module, "pbs_settings", None)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    reason = "not_applied" if settings is None else _fallback_reason(settings, query, key, attention_mask,
                                                                     dropout, kwargs, causal)
    if reason is not None:
        _count(f"fallback:{reason}")
        logger.debug("pbs_tune: layer %s falls back to SDPA (%s)", getattr(module, "layer_idx", "?"), reason)
        return sdpa()
    out = _run(settings, query, key, value, scaling, getattr(module, "layer_idx", None), sdpa, padding)
    if out is None:
        return sdpa()
    if isinstance(out, tuple):  # SDPA fallback already returns (B, N, H, D), None
        return out
    return out.transpose(1, 2).contiguous(), None


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    AttentionInterface.register(ATTN_NAME, _pbs_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, flash_attention_mask)  # 2-D padding mask or None


_resolved = {}  # id of a profile read with profiles.load() -> (weak reference to it, its copy for this GPU)


def _ready(prof):
    """A profile made or loaded elsewhere, checked and bound to this process (once). One read
    with profiles.load() names no GPU: it is used through a copy that names the GPU present,
    made once, so the caller's object is never changed."""
    if prof.gpu is None:
        ref, copy = _resolved.get(id(prof), (None, None))
        if ref is None or ref() is not prof:
            gpu = present_gpu()
            copy = dataclasses.replace(prof, gpu=gpu, runnable=gpu is not None, load_times={})
            _resolved[id(prof)] = (weakref.ref(prof), copy)
        prof = copy
    _require_runnable(prof)
    if not prof.for_gpu(prof.gpu):
        raise profiles.ProfileError(f"{prof.path} has no entries for {prof.gpu} that passed their held-out check; "
                                    f"make them with: {profile_store.sweep_hint(prof.gpu, prof.path)}")
    if prof.gpu != CPU and "bind_s" not in prof.load_times:
        prof.load_times.update(_bind_kernels(prof))
    return prof


def apply(model, profile=None, min_seqlen=None, min_chunk=MIN_CHUNK, cuda_graphs=True):
    """Switch a transformers model to PBS attention with a tuned profile; returns the model.

    min_seqlen: fewest keys (prefix + chunk) for PBS (default: the profile's smallest tuned
    length); min_chunk: fewest queries of a chunk after a cached prefix for PBS; cuda_graphs:
    replay the op from a CUDA graph per shape up to 16k keys (graphs.py; PBS_TUNE_CUDA_GRAPHS=0
    turns it off everywhere).
    """
    prof = _ready(profile if profile is not None else load_profile())
    min_seqlen = max(shortest_pbs_length(prof), min_seqlen or 0)
    _register()
    settings = _Settings(prof, min_seqlen, min_chunk, cuda_graphs)
    n_layers = 0
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups"):
            module.pbs_settings = settings
            n_layers += 1
    if n_layers == 0:
        raise ValueError(f"{type(model).__name__} has no attention modules that pbs-tune recognises")
    if settings.graphs is not None and any(e.layers for e in prof.for_gpu(prof.gpu)):
        settings.graphs.hold(n_layers + CAPACITY)  # per-layer plans: a graph per layer, and room for shapes
    model.set_attn_implementation(ATTN_NAME)
    logger.info("pbs_tune: PBS on %d attention layers from %s tokens (%s)", n_layers,
                format_length(min_seqlen), prof.path)
    return model


def tuned_attention(q, k, v, profile=None, scale=None):
    """PBS causal prefill with the tuned entry for this length; SDPA where PBS does not apply.

    Usable without transformers: q (B, Hq, M, D), k/v (B, Hkv, N, D), M <= N (the queries are
    the last M positions); returns (B, Hq, M, D). Without `profile`, this GPU's profile is loaded
    once per process.
    """
    global _default_profile
    if profile is None:
        _default_profile = _default_profile or load_profile()
    prof = _ready(profile if profile is not None else _default_profile)
    shortest = shortest_pbs_length(prof)
    settings = _Settings(prof, shortest if shortest is not None else float("inf"))

    def sdpa():
        return dense_causal(q, k, v, scale)

    reason = _fallback_reason(settings, q, k, None, 0.0, {})
    if reason is not None:
        _count(f"fallback:{reason}")
        return sdpa()
    return _run(settings, q, k, v, scale, None, sdpa)

