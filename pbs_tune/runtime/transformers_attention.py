"""PBS inside a transformers model: the attention function registered as "pbs" through
transformers' `AttentionInterface`, and `apply`, which switches a model to it.

The mask builder registered for "pbs" hands over transformers' 2-D padding mask (or None), as
for flash attention; what runs is the model's `PbsServing` (serving.py), held by each of its
attention modules, and every fallback is transformers' own SDPA attention with the 4-D mask made
only then.
"""
import logging

import torch

from ..profile.profiles import Profile
from ..seqlen import format_length
from .graphs import CAPACITY
from .loader import load_profile, ready
from .prefix_cache import cache_of, remember_cache
from .serving import PbsServing
from .state import STATE

logger = logging.getLogger("pbs_tune")
ATTN_NAME = "pbs"


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

    serving = getattr(module, "pbs_serving", None)
    layer, cache = getattr(module, "layer_idx", None), cache_of(module)
    if serving is None:
        STATE.count("fallback:not_applied")
        logger.debug("pbs_tune: layer %s falls back to SDPA (not_applied)", layer)
        return sdpa()
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # This layer's prefix states leave the cache's side here, back only if this call extends them.
    held = serving.prefixes.take_layer(cache, layer) if cache is not None else {}
    out = serving.run(query, key, value, scale=scaling, layer_idx=layer, padding=padding, cache=cache, held=held,
                      attention_mask=attention_mask, dropout=dropout, kwargs=kwargs, causal=causal,
                      dense=lambda: sdpa()[0].transpose(1, 2))
    return out.transpose(1, 2).contiguous(), None  # no copy where SDPA ran: its own layout comes back


def serving_of(model: torch.nn.Module) -> PbsServing | None:
    """The `PbsServing` that `apply` gave this model's attention modules (its plans, prefix states and
    graphs), or None if it was not applied."""
    return next((m.pbs_serving for m in model.modules() if getattr(m, "pbs_serving", None) is not None), None)


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    AttentionInterface.register(ATTN_NAME, _pbs_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, flash_attention_mask)  # 2-D padding mask or None


def apply(model: torch.nn.Module, profile: Profile | None = None, min_seqlen: int | None = None,
          min_chunk: int | None = None, cuda_graphs: bool = True, prefix_keys: bool = False) -> torch.nn.Module:
    """Switch a transformers model to PBS attention ("pbs") with a tuned profile; SDPA runs where PBS cannot.

    Chunks keep their prefix's permutation beside the cache they extend (op/prefix.py, prefix_cache.py);
    the rows whose logits a prefill returns attend to every key (PbsParams.tail_blocks, on by default).

    Args:
        model: a transformers model whose attention modules have layer_idx and num_key_value_groups;
            changed in place. ValueError where it has none.
        profile: a tuned `Profile`; None: this GPU's (load_profile()).
        min_seqlen: fewest keys (prefix + chunk) for PBS; None, or fewer: the profile's smallest tuned length.
        min_chunk: fewest queries of a chunk after a cached prefix for PBS; None: each entry's measured crossover.
        cuda_graphs: replay short calls from a CUDA graph per shape (graphs.py); PBS_TUNE_CUDA_GRAPHS=0: never.
        prefix_keys: chunks hold their prefix's permuted K and V (PrefixState(keep_keys=True): faster chunks,
            as much memory again as the prefix's K and V until the prefill ends) instead of gathering them.

    Returns:
        The same model.
    """
    prof = ready(profile if profile is not None else load_profile())
    _register()
    serving = PbsServing(prof, min_seqlen, min_chunk, cuda_graphs, prefix_keys)
    n_layers = 0
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups"):
            module.pbs_serving = serving
            if getattr(module, "pbs_cache_hook", None) is None:
                module.pbs_cache_hook = module.register_forward_pre_hook(remember_cache, with_kwargs=True)
            n_layers += 1
    if n_layers == 0:
        raise ValueError(f"{type(model).__name__} has no attention modules that pbs-tune recognises")
    if serving.graphs is not None and any(e.layers for e in prof.for_gpu(prof.gpu)):
        serving.graphs.hold(n_layers + CAPACITY)  # per-layer plans: a graph per layer, and room for shapes
    model.set_attn_implementation(ATTN_NAME)
    logger.info("pbs_tune: PBS on %d attention layers from %s tokens (%s)", n_layers,
                format_length(serving.min_seqlen), prof.path)
    return model
