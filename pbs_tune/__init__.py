"""pbs-tune: ahead-of-time tuned Permuted Block-Sparse Attention (PBS-Attn) prefill.

`pbs_attention` is the raw op (its parameters one `PbsParams`, or keywords) (`pbs_attention_varlen` for packed
batches, `pbs_attention_chunk` for chunked prefill that keeps its prefix's permutation in a
`PrefixState`), in three public stages:
`permute_keys`, `select_blocks` (or both: `permute_and_select`) and `attend_blocks`.
`load_profile` returns this GPU's tuned `Profile`; `tuned_attention` and `apply` run the op with it.

The names are loaded on first use (PEP 562), so that `import pbs_tune` and the `pbs-tune` command
do not pay for torch and Triton until something needs them.
"""
import importlib

__version__ = "0.1.0"

_WHERE = {
    ".profile.launch": ["LaunchConfig", "default_launch"],
    ".op.pbs_attention": ["attend_blocks", "check_inputs", "pbs_attention", "permute_and_select"],
    ".op.permutation": ["KeyPermutation", "identity_permutation", "permute_keys"],
    ".op.selection": ["BlockList", "block_list_from_mask", "select_blocks"],
    ".op.prefix": ["PrefixState", "pbs_attention_chunk"],
    ".op.varlen": ["pbs_attention_varlen"],
    ".profile.params": ["PbsParams"],
    ".profile.profiles": ["Profile", "ProfileError"],
    ".runtime.serving": ["PbsServing", "tuned_attention"],
    ".runtime.loader": ["load_profile"],
    ".runtime.state": ["reset_stats", "stats"],
    ".runtime.transformers_attention": ["apply"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'pbs_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
