"""pbs-tune: ahead-of-time tuned Permuted Block-Sparse Attention (PBS-Attn) prefill.

`pbs_attention` is the raw op (`pbs_attention_varlen` for packed batches), in three public stages:
`permute_keys`, `select_blocks` (or both: `permute_and_select`) and `attend_blocks`.
`load_profile` returns this GPU's tuned `Profile`; `tuned_attention` and `apply` run the op with it.
"""
from .op.launch_config import LaunchConfig, default_launch
from .op.pbs_attention import attend_blocks, check_inputs, pbs_attention, permute_and_select
from .op.permutation import KeyPermutation, identity_permutation, permute_keys
from .op.selection import BlockList, block_list_from_mask, select_blocks
from .op.varlen import pbs_attention_varlen
from .runtime.loader import apply, load_profile, reset_stats, stats, tuned_attention
from .runtime.profiles import Profile, ProfileError

__version__ = "0.1.0"

__all__ = [
    "BlockList", "KeyPermutation", "LaunchConfig", "Profile", "ProfileError", "apply", "attend_blocks",
    "block_list_from_mask", "check_inputs", "default_launch", "identity_permutation", "load_profile",
    "pbs_attention", "pbs_attention_varlen", "permute_and_select", "permute_keys", "reset_stats", "select_blocks",
    "stats", "tuned_attention",
]
