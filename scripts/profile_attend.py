"""One attend launch per kernel at one grid cell, for Nsight Compute (scripts/profile_attend.sh)."""
import sys

import torch

from pbs_tune import LaunchConfig
from pbs_tune.bench.kernels import random_blocks
from pbs_tune.op.pbs_attention import attend_blocks
from pbs_tune.op.permutation import identity_permutation
from pbs_tune.op.selection import block_list_from_mask

n, density = int(sys.argv[1]), float(sys.argv[2])
q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
perm = identity_permutation(k, v)
blocks = block_list_from_mask(random_blocks(1, 32, n, 128, density, "cuda"), perm.positions, 128)
for label in sys.argv[3:]:
    for _ in range(3):  # the profiler takes the last launch of each kernel
        attend_blocks(q, perm, blocks, launch=LaunchConfig.parse(label))
torch.cuda.synchronize()
print(f"n={n} density={blocks.density():.3f}")
