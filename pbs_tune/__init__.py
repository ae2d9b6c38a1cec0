"""pbs-tune: ahead-of-time tuned Permuted Block-Sparse Attention (PBS-Attn) prefill."""
from .launch import LaunchConfig, default_launch
from .loader import apply, attention, load_profile, reset_stats, stats
from .op import attend, check_inputs, pbs_attention, plan
from .permutation import KeyPermutation, identity_permutation, permute_keys
from .selection import BlockList, block_list_from_mask, select_blocks

__version__ = "0.1.0"

__all__ = [
    "BlockList", "KeyPermutation", "LaunchConfig", "attend", "block_list_from_mask",
    "check_inputs", "default_launch", "identity_permutation", "pbs_attention", "permute_keys",
    "plan", "select_blocks", "apply", "attention", "load_profile", "reset_stats", "stats",
]
