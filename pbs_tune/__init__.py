"""pbs-tune: ahead-of-time tuned Permuted Block-Sparse Attention (PBS-Attn) prefill.

`pbs_attention` is the raw op (`pbs_attention_varlen` for packed batches; three public stages: `permute_keys`, `select_blocks`,
`attend_blocks`); `tuned_attention` and `apply` run it with this GPU's tuned profile.
"""
from .op.launch_config import LaunchConfig, default_launch
from .op.pbs_attention import attend, attend_blocks, check_inputs, pbs_attention, plan
from .op.permutation import KeyPermutation, identity_permutation, permute_keys
from .op.selection import BlockList, block_list_from_mask, select_blocks
from .op.varlen import pbs_attention_varlen
from .runtime.loader import apply, attention, load_profile, reset_stats, stats, tuned_attention

__version__ = "0.1.0"

__all__ = [
    "BlockList", "KeyPermutation", "LaunchConfig", "attend", "attend_blocks", "block_list_from_mask",
    "check_inputs", "default_launch", "identity_permutation", "pbs_attention", "pbs_attention_varlen", "permute_keys",
    "plan", "select_blocks", "apply", "attention", "tuned_attention", "load_profile", "reset_stats", "stats",
]
